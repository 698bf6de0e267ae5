/*
 * One QUIC connection: ngtcp2 callbacks, the read and write paths, timers and closing.
 *
 * ngtcp2 callbacks only record state and call the (sync) C callbacks of quic.h; anything that
 * needs ngtcp2 again (opening streams, FIN, resets, flow-control credit) is applied in
 * tun__qconn_flush(), which the endpoint runs after each receive batch and before the loop
 * blocks.
 */
#include "identity/identity.h"
#include "quic/internal.h"
#include "util/error.h"
#include "util/log.h"

#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A random connection ID that can never be mistaken for STUN (see tun_qep_is_other): bytes 3-6
 * of a CID are bytes 4-7 of a short-header packet. */
void tun__random_cid(uint8_t *id, size_t len)
{
    do
        randombytes_buf(id, len);
    while (len >= 7 && id[3] == 0x21 && id[4] == 0x12 && id[5] == 0xa4 && id[6] == 0x42);
}

static struct tun_qconn *conn_of(ngtcp2_conn *conn, void *user_data)
{
    (void)conn;
    return user_data;
}

static struct tun_tls_peer *peer_of(void *user_data)
{
    return user_data ? &((struct tun_qconn *)user_data)->peer : NULL;
}

static ngtcp2_conn *get_conn(ngtcp2_crypto_conn_ref *ref)
{
    return ((struct tun_qconn *)ref->user_data)->conn;
}

static void rand_cb(uint8_t *dest, size_t destlen, const ngtcp2_rand_ctx *ctx)
{
    (void)ctx;
    randombytes_buf(dest, destlen);
}

static int get_new_cid_cb(ngtcp2_conn *conn, ngtcp2_cid *cid, uint8_t *token, size_t cidlen,
                          void *user_data)
{
    struct tun_qconn *c = conn_of(conn, user_data);
    tun__random_cid(cid->data, cidlen);
    cid->datalen = cidlen;
    tun__qep_reset_token(c->ep, cid->data, cidlen, token);
    if (tun__qep_add_cid(c->ep, cid->data, cidlen, c) != 0)
        return NGTCP2_ERR_CALLBACK_FAILURE;
    return 0;
}

static int remove_cid_cb(ngtcp2_conn *conn, const ngtcp2_cid *cid, void *user_data)
{
    struct tun_qconn *c = conn_of(conn, user_data);
    tun__qep_remove_cid(c->ep, cid->data, cid->datalen);
    return 0;
}

static int recv_stateless_reset_cb(ngtcp2_conn *conn, const ngtcp2_pkt_stateless_reset *sr,
                                   void *user_data)
{
    (void)sr;
    conn_of(conn, user_data)->stateless_reset = 1;
    return 0;
}

static int handshake_completed_cb(ngtcp2_conn *conn, void *user_data)
{
    struct tun_qconn *c = conn_of(conn, user_data);
    /* The server drops the client's original DCID from routing once the handshake is done. */
    if (c->odcid.datalen) {
        tun__qep_remove_cid(c->ep, c->odcid.data, c->odcid.datalen);
        c->odcid.datalen = 0;
    }
    c->ready_pending = 1;
    tun__qep_mark_dirty(c->ep, c);
    return 0;
}

static struct tun_qstream *stream_for(struct tun_qconn *c, int64_t sid, void *sud)
{
    if (sud)
        return sud;
    /* A stream the peer opened: make it known to the application before any data. */
    struct tun_qstream *s = tun__qstream_new(c, sid);
    if (!s)
        return NULL;
    ngtcp2_conn_set_stream_user_data(c->conn, sid, s);
    if (c->cbs.on_stream)
        c->cbs.on_stream(c, s, c->ud);
    return s;
}

static int recv_stream_data_cb(ngtcp2_conn *conn, uint32_t flags, int64_t sid, uint64_t offset,
                               const uint8_t *data, size_t datalen, void *user_data,
                               void *stream_user_data)
{
    struct tun_qconn *c = conn_of(conn, user_data);
    (void)offset;
    struct tun_qstream *s = stream_for(c, sid, stream_user_data);
    if (!s)
        return NGTCP2_ERR_CALLBACK_FAILURE;
    if (datalen) {
        if (s->cbs.on_data)
            s->cbs.on_data(s, data, datalen, s->ud);
        else
            tun_qstream_consume(s, datalen); /* nobody reads it: do not stall the peer */
    }
    if ((flags & NGTCP2_STREAM_DATA_FLAG_FIN) && s->cbs.on_fin)
        s->cbs.on_fin(s, s->ud);
    return 0;
}

static int stream_open_cb(ngtcp2_conn *conn, int64_t sid, void *user_data)
{
    struct tun_qconn *c = conn_of(conn, user_data);
    return stream_for(c, sid, NULL) ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int acked_cb(ngtcp2_conn *conn, int64_t sid, uint64_t offset, uint64_t datalen,
                    void *user_data, void *stream_user_data)
{
    (void)conn;
    (void)sid;
    (void)user_data;
    struct tun_qstream *s = stream_user_data;
    if (s)
        tun__qstream_acked(s, offset + datalen);
    return 0;
}

static int stream_close_cb(ngtcp2_conn *conn, uint32_t flags, int64_t sid, uint64_t code,
                           void *user_data, void *stream_user_data)
{
    (void)conn;
    (void)flags;
    (void)sid;
    (void)code;
    (void)user_data;
    struct tun_qstream *s = stream_user_data;
    if (!s || s->closed)
        return 0;
    s->closed = 1;
    if (s->cbs.on_close)
        s->cbs.on_close(s, s->ud);
    tun__qstream_free(s);
    return 0;
}

static int stream_reset_cb(ngtcp2_conn *conn, int64_t sid, uint64_t final_size, uint64_t code,
                           void *user_data, void *stream_user_data)
{
    (void)conn;
    (void)sid;
    (void)final_size;
    (void)user_data;
    struct tun_qstream *s = stream_user_data;
    if (s && s->cbs.on_reset)
        s->cbs.on_reset(s, code, s->ud);
    return 0;
}

static int stop_sending_cb(ngtcp2_conn *conn, int64_t sid, uint64_t code, void *user_data,
                           void *stream_user_data)
{
    (void)conn;
    (void)sid;
    (void)user_data;
    struct tun_qstream *s = stream_user_data;
    if (s && s->cbs.on_reset)
        s->cbs.on_reset(s, code, s->ud);
    return 0;
}

static int extend_max_stream_data_cb(ngtcp2_conn *conn, int64_t sid, uint64_t max_data,
                                     void *user_data, void *stream_user_data)
{
    (void)conn;
    (void)sid;
    (void)max_data;
    struct tun_qstream *s = stream_user_data;
    if (s && s->blocked) {
        s->blocked = 0;
        if (s->sent < s->written || (s->fin_requested && !s->fin_sent))
            tun__sendq_add(s->conn, s);
    }
    (void)user_data;
    return 0;
}

static int recv_datagram_cb(ngtcp2_conn *conn, uint32_t flags, const uint8_t *data, size_t datalen,
                            void *user_data)
{
    (void)flags;
    struct tun_qconn *c = conn_of(conn, user_data);
    if (c->cbs.on_datagram)
        c->cbs.on_datagram(c, data, datalen, c->ud);
    return 0;
}

static int path_validation_cb(ngtcp2_conn *conn, uint32_t flags, const ngtcp2_path *path,
                              ngtcp2_path_validation_result res, void *user_data)
{
    (void)conn;
    (void)flags;
    (void)path;
    struct tun_qconn *c = user_data;
    tun_log_debug(QUIC, "conn %llu: path validation %s", (unsigned long long)c->id,
                  res == NGTCP2_PATH_VALIDATION_RESULT_SUCCESS ? "succeeded" : "failed");
    c->uconn_stale = 1; /* a validated migration takes effect, a failed one goes back */
    tun__qep_mark_dirty(c->ep, c);
    return 0;
}

static void ngtcp2_log_cb(void *user_data, const char *fmt, ...)
{
    (void)user_data;
    va_list ap;
    va_start(ap, fmt);
    tun_vlog(TUN_LOG_G_NGTCP2, TUN_LOG_TRACE, fmt, ap);
    va_end(ap);
}

static void timer_cb(uv_timer_t *t);

static void fill_callbacks(ngtcp2_callbacks *cb, int is_server)
{
    memset(cb, 0, sizeof(*cb));
    if (is_server) {
        cb->recv_client_initial = ngtcp2_crypto_recv_client_initial_cb;
    } else {
        cb->client_initial = ngtcp2_crypto_client_initial_cb;
        cb->recv_retry = ngtcp2_crypto_recv_retry_cb;
    }
    cb->recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb;
    cb->encrypt = ngtcp2_crypto_encrypt_cb;
    cb->decrypt = ngtcp2_crypto_decrypt_cb;
    cb->hp_mask = ngtcp2_crypto_hp_mask_cb;
    cb->update_key = ngtcp2_crypto_update_key_cb;
    cb->delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb;
    cb->delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb;
    cb->get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb;
    cb->version_negotiation = ngtcp2_crypto_version_negotiation_cb;
    cb->rand = rand_cb;
    cb->get_new_connection_id = get_new_cid_cb;
    cb->remove_connection_id = remove_cid_cb;
    cb->handshake_completed = handshake_completed_cb;
    cb->recv_stream_data = recv_stream_data_cb;
    cb->stream_open = stream_open_cb;
    cb->acked_stream_data_offset = acked_cb;
    cb->stream_close = stream_close_cb;
    cb->stream_reset = stream_reset_cb;
    cb->stream_stop_sending = stop_sending_cb;
    cb->extend_max_stream_data = extend_max_stream_data_cb;
    cb->recv_datagram = recv_datagram_cb;
    cb->path_validation = path_validation_cb;
    cb->recv_stateless_reset = recv_stateless_reset_cb;
}

/* "bbr" is ngtcp2's BBRv2: its v1 held an app-limited flow of DATAGRAMs below the offered rate
 * (1 Gbit/s of 1200-byte UDP lost 2-4 % in its queue on a veth, BBRv2 0-0.7 %; see
 * docs/benchmarks.md), and v2 reacts to loss, which v1 ignores. */
static const ngtcp2_cc_algo cc_map[] = {NGTCP2_CC_ALGO_BBR2, NGTCP2_CC_ALGO_CUBIC,
                                        NGTCP2_CC_ALGO_RENO};

int tun__qconn_new(struct tun_qep *ep, int is_server, const struct sockaddr *local,
                   const struct sockaddr *remote, const ngtcp2_pkt_hd *hd,
                   const uint8_t *server_key, struct tun_qconn **out)
{
    socklen_t remotelen = tun_sockaddr_len(remote);
    struct tun_qconn *c = calloc(1, sizeof(*c));
    if (!c)
        return TUN_ENOMEM;
    c->ep = ep;
    c->id = ++ep->next_conn_id;
    memcpy(&c->remote, remote, remotelen);
    c->remotelen = remotelen;
    c->uconn_stale = 1;
    c->locallen = tun_sockaddr_len(local);
    memcpy(&c->local, local, c->locallen);
    c->conn_ref.get_conn = get_conn;
    c->conn_ref.user_data = c;
    if (server_key) {
        memcpy(c->peer.expected, server_key, 32);
        c->peer.pin = 1;
    }

    const struct tun_quic_config *cfg = &ep->cfg;
    ngtcp2_callbacks cbs;
    fill_callbacks(&cbs, is_server);
    ngtcp2_settings settings;
    ngtcp2_settings_default(&settings);
    settings.initial_ts = tun__now();
    settings.cc_algo = cc_map[cfg->cc < 0 || cfg->cc > 2 ? 0 : cfg->cc];
    settings.max_window = cfg->max_conn_window;
    settings.max_stream_window = cfg->max_stream_window;
    settings.handshake_timeout = cfg->handshake_timeout_ms * NGTCP2_MILLISECONDS;
    if (tun_log_enabled(TUN_LOG_G_NGTCP2, TUN_LOG_TRACE))
        settings.log_printf = ngtcp2_log_cb;

    ngtcp2_transport_params params;
    ngtcp2_transport_params_default(&params);
    params.initial_max_stream_data_bidi_local = cfg->stream_window;
    params.initial_max_stream_data_bidi_remote = cfg->stream_window;
    params.initial_max_data = cfg->conn_window;
    params.initial_max_streams_bidi = cfg->max_streams;
    params.initial_max_streams_uni = 0;
    params.max_idle_timeout = cfg->idle_timeout_ms * NGTCP2_MILLISECONDS;
    params.max_datagram_frame_size = 65535;
    /* Path migration (relay <-> direct) needs spare connection IDs on both sides. */
    params.active_connection_id_limit = 8;
    /* ngtcp2 0.12 advertises support for greasing the QUIC bit whatever this says; STUN is told
     * apart by its magic cookie instead (tun_qep_is_other). */
    params.grease_quic_bit = 0;

    ngtcp2_cid scid, dcid;
    scid.datalen = TUN_QUIC_CIDLEN;
    tun__random_cid(scid.data, scid.datalen);
    ngtcp2_path path = {
        {(ngtcp2_sockaddr *)&c->local, c->locallen},
        {(ngtcp2_sockaddr *)&c->remote, c->remotelen},
        NULL,
    };
    int rv;
    if (is_server) {
        params.original_dcid = hd->dcid;
        settings.token = hd->token;
        params.stateless_reset_token_present = 1;
        tun__qep_reset_token(ep, scid.data, scid.datalen, params.stateless_reset_token);
        rv = ngtcp2_conn_server_new(&c->conn, &hd->scid, &scid, &path, hd->version, &cbs, &settings,
                                    &params, NULL, c);
        c->odcid = hd->dcid;
    } else {
        dcid.datalen = TUN_QUIC_CIDLEN;
        randombytes_buf(dcid.data, dcid.datalen);
        rv = ngtcp2_conn_client_new(&c->conn, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1, &cbs,
                                    &settings, &params, NULL, c);
    }
    if (rv != 0) {
        tun_log_error(QUIC, "cannot create connection: %s", ngtcp2_strerror(rv));
        free(c);
        return TUN_EINTERNAL;
    }
    int rc = tun_tls_session_new(ep->tls, &c->conn_ref, peer_of, &c->tls);
    if (rc != 0) {
        ngtcp2_conn_del(c->conn);
        free(c);
        return rc;
    }
    ngtcp2_conn_set_tls_native_handle(c->conn, c->tls);
    if (ep->cfg.keepalive_ms)
        ngtcp2_conn_set_keep_alive_timeout(c->conn, ep->cfg.keepalive_ms * NGTCP2_MILLISECONDS);

    if (tun__qep_add_cid(ep, scid.data, scid.datalen, c) != 0 ||
        (is_server && tun__qep_add_cid(ep, hd->dcid.data, hd->dcid.datalen, c) != 0)) {
        tun__qep_remove_cid(ep, scid.data, scid.datalen);
        gnutls_deinit(c->tls);
        ngtcp2_conn_del(c->conn);
        free(c);
        return TUN_ENOMEM;
    }
    uv_timer_init(ep->loop, &c->timer);
    c->timer.data = c;
    c->next = ep->conns;
    if (ep->conns)
        ep->conns->prev = c;
    ep->conns = c;
    *out = c;
    return 0;
}

/* Record why the connection ends and arrange for the application to hear about it. */
static void set_closed(struct tun_qconn *c, int local, int app, uint64_t code, int err,
                       const char *reason, size_t reasonlen)
{
    if (c->closed)
        return;
    c->closed = 1;
    c->why.local = local;
    c->why.app = app;
    c->why.code = code;
    c->why.err = err;
    if (reasonlen >= sizeof(c->why.reason))
        reasonlen = sizeof(c->why.reason) - 1;
    memcpy(c->why.reason, reason ? reason : "", reason ? reasonlen : 0);
    c->why.reason[reason ? reasonlen : 0] = '\0';
    c->close_pending = 1;
    tun__qep_mark_dirty(c->ep, c);
}

/* Send CONNECTION_CLOSE for `ccerr` (best effort) and mark the connection closed. */
static void close_with(struct tun_qconn *c, const ngtcp2_connection_close_error *ccerr, int err,
                       const char *reason)
{
    if (c->closed)
        return;
    if (!ngtcp2_conn_is_in_draining_period(c->conn)) {
        ngtcp2_path_storage ps;
        ngtcp2_path_storage_zero(&ps);
        ngtcp2_pkt_info pi;
        uint8_t buf[TUN_QUIC_MAX_PKT];
        ngtcp2_ssize n = ngtcp2_conn_write_connection_close(c->conn, &ps.path, &pi, buf,
                                                            sizeof(buf), ccerr, tun__now());
        if (n > 0)
            tun__qep_send(c->ep, c, (const struct sockaddr *)ps.path.local.addr,
                          (const struct sockaddr *)ps.path.remote.addr, buf, (size_t)n, 0);
    }
    int app = ccerr->type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_APPLICATION;
    set_closed(c, 1, app, ccerr->error_code, err, reason, reason ? strlen(reason) : 0);
}

void tun__qconn_abort(struct tun_qconn *c, uint64_t code, const char *reason)
{
    ngtcp2_connection_close_error ccerr;
    ngtcp2_connection_close_error_default(&ccerr);
    ngtcp2_connection_close_error_set_application_error(&ccerr, code, (const uint8_t *)reason,
                                                        reason ? strlen(reason) : 0);
    close_with(c, &ccerr, 0, reason);
}

static void describe_identity_failure(struct tun_qconn *c, char *buf, size_t cap)
{
    if (c->peer.mismatch) {
        char exp[TUN_ENDPOINT_ID_LEN + 1], got[TUN_ENDPOINT_ID_LEN + 1];
        tun_endpoint_id_format(exp, c->peer.expected);
        tun_endpoint_id_format(got, c->peer.key);
        snprintf(buf, cap, "server identity mismatch: expected %s, got %s", exp, got);
    } else if (c->peer.wrong_type) {
        snprintf(buf, cap, "peer did not present an Ed25519 raw public key");
    } else {
        snprintf(buf, cap, "TLS handshake failed (alert %u)", ngtcp2_conn_get_tls_alert(c->conn));
    }
}

/* Handle an error from read_pkt or handle_expiry. */
static void on_conn_error(struct tun_qconn *c, int rv)
{
    ngtcp2_connection_close_error ccerr;
    ngtcp2_connection_close_error_default(&ccerr);
    char msg[256];
    switch (rv) {
    case NGTCP2_ERR_DRAINING: {
        if (c->stateless_reset) {
            /* The peer no longer knows the connection (it restarted, say) and answered with
             * the token it gave us for it: no CONNECTION_CLOSE, so say what happened. */
            static const char why[] = "the peer reset the connection (stateless reset): it has "
                                      "no state for it any more, e.g. after a restart";
            set_closed(c, 0, 0, 0, TUN_ECLOSED, why, sizeof(why) - 1);
            return;
        }
        /* The peer closed: report its code and reason. */
        ngtcp2_connection_close_error peer;
        ngtcp2_conn_get_connection_close_error(c->conn, &peer);
        set_closed(c, 0, peer.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_APPLICATION,
                   peer.error_code, 0, (const char *)peer.reason, peer.reasonlen);
        return;
    }
    case NGTCP2_ERR_IDLE_CLOSE:
        set_closed(c, 1, 0, 0, TUN_ETIMEDOUT, "idle timeout: the peer stopped answering", 40);
        return;
    case NGTCP2_ERR_HANDSHAKE_TIMEOUT: {
        /* Name the limit: it is configurable ([transport] connect_timeout). */
        int n =
            snprintf(msg, sizeof(msg), "handshake timed out after %.3g s: no answer from the peer",
                     (double)c->ep->cfg.handshake_timeout_ms / 1000);
        set_closed(c, 1, 0, 0, TUN_ETIMEDOUT, msg, (size_t)n);
        return;
    }
    case NGTCP2_ERR_DROP_CONN:
        set_closed(c, 1, 0, 0, TUN_EPROTO, "connection dropped", 18);
        return;
    case NGTCP2_ERR_CRYPTO:
        describe_identity_failure(c, msg, sizeof(msg));
        ngtcp2_connection_close_error_set_transport_error_tls_alert(
            &ccerr, ngtcp2_conn_get_tls_alert(c->conn), NULL, 0);
        close_with(c, &ccerr, TUN_ECRYPTO, msg);
        return;
    default:
        snprintf(msg, sizeof(msg), "QUIC error: %s", ngtcp2_strerror(rv));
        ngtcp2_connection_close_error_set_transport_error_liberr(&ccerr, rv, NULL, 0);
        close_with(c, &ccerr, TUN_EPROTO, msg);
        return;
    }
}

void tun__qconn_read(struct tun_qconn *c, const struct sockaddr *local, const struct sockaddr *from,
                     const uint8_t *data, size_t len, unsigned ecn)
{
    if (c->closed)
        return;
    ngtcp2_path path = {
        {(ngtcp2_sockaddr *)local, tun_sockaddr_len(local)},
        {(ngtcp2_sockaddr *)from, tun_sockaddr_len(from)},
        NULL,
    };
    ngtcp2_pkt_info pi = {.ecn = (uint8_t)ecn};
    c->rx_bytes += len;
    c->rx_packets++;
    /* Packets on other paths (probes of an old path, say) prove nothing about this one. */
    if (tun_sockaddr_equal(from, (struct sockaddr *)&c->remote))
        c->rx_path_packets++;
    c->rx_since_flush += len; /* see hold_ack() */
    int rv = ngtcp2_conn_read_pkt(c->conn, &path, &pi, data, len, tun__now());
    if (rv != 0) {
        tun_log_debug(QUIC, "conn %llu: read: %s", (unsigned long long)c->id, ngtcp2_strerror(rv));
        on_conn_error(c, rv);
        return;
    }
    /* Track the peer's current address (NAT rebinding, migration). */
    const ngtcp2_path *cur = ngtcp2_conn_get_path(c->conn);
    if (cur->remote.addrlen <= sizeof(c->remote) &&
        !tun_sockaddr_equal((const struct sockaddr *)cur->remote.addr,
                            (const struct sockaddr *)&c->remote)) {
        memcpy(&c->remote, cur->remote.addr, cur->remote.addrlen);
        c->remotelen = cur->remote.addrlen;
        c->uconn_stale = 1;
    }
    tun__qep_mark_dirty(c->ep, c);
}

/* Apply what the application asked for since the last flush. */
static void apply_stream_ops(struct tun_qconn *c)
{
    struct tun_qstream *s;
    while ((s = tun__qstream_ops_pop(c))) {
        if (s->consume_pending) {
            ngtcp2_conn_extend_max_stream_offset(c->conn, s->id, s->consume_pending);
            ngtcp2_conn_extend_max_offset(c->conn, s->consume_pending);
            s->consume_pending = 0;
        }
        if (s->reset_requested && !s->reset_done) {
            s->reset_done = 1;
            /* May close the stream synchronously (stream_close_cb frees it). */
            ngtcp2_conn_shutdown_stream(c->conn, s->id, s->reset_code);
        }
    }
}

/*
 * Holding the ACK for the answer.
 *
 * In a request/response exchange on a fast link, ngtcp2 0.12 sends four packets per round
 * trip instead of two: it puts an ACK into a packet only once the ACK is due, RTT/8 after the
 * packet it acknowledges arrived (tens of microseconds here), so a quick answer leaves without
 * it and a slow one (slower than RTT/8) finds it already sent on its own. And once one side has
 * sent an ACK-only packet, the other side's next packet number skips one, which ngtcp2 takes
 * for a gap and acknowledges at once, so the pattern feeds itself. Each extra packet wakes both
 * processes; on a small machine that is a tenth of the round trip.
 *
 * So, like TCP's delayed ACK, a flush that follows less than two full packets' worth of data
 * starts a hold of TUN_ACK_HOLD: while it lasts and nothing is queued, the connection does not
 * wake for the ACK deadline, and unless an ACK from the peer came in (which may have declared
 * packets lost), it does not write at all: the write would only be our ACK. The next packet we
 * send anyway carries the ACK, as it is due by then, and renews the hold. More data, the deadline
 * or a close end the hold, so an ACK waits at most TUN_ACK_HOLD after our last packet. Bulk
 * transfers never hold: their flushes follow batches of full packets. The delay stays far below the
 * max_ack_delay we advertise (25 ms), which the peer's loss detection allows for and its RTT
 * estimate subtracts; with packets in flight, it may postpone our own time-threshold loss detection
 * by as much (that deadline hides behind the same expiry as the ACK's in ngtcp2 0.12's API).
 *
 * Why 5 ms and not less: the hold's timer becomes the loop's epoll timeout, and a timeout
 * shorter than the kernel's tick (4 ms at HZ=250, Debian's default) is the earliest timer on the
 * CPU, so each epoll_wait reprograms the timer hardware, which in a virtual machine is an exit to
 * the hypervisor. With a 1 ms hold (a 2 ms timeout) the ping-pong benchmark spent 10-24 % more
 * CPU per round trip than with 5 ms (two paired runs of 8 x 10,000 round trips, 2 vCPUs), for no
 * faster answer: the answer carries the ACK either way.
 */
#define TUN_ACK_HOLD       (5 * NGTCP2_MILLISECONDS)
#define TUN_ACK_HOLD_BYTES (2 * 1200)

/* At the start of a flush: update the hold; 1 when the flush should not write. */
static int hold_ack(struct tun_qconn *c)
{
    uint64_t rx = c->rx_since_flush;
    c->rx_since_flush = 0;
    int start = !c->hold_until && rx && rx < TUN_ACK_HOLD_BYTES && c->ready && !c->want_close;
    if (!c->hold_until && !start)
        return 0;
    ngtcp2_tstamp now = tun__now();
    ngtcp2_conn_stat st;
    ngtcp2_conn_get_conn_stat(c->conn, &st);
    if (start && st.smoothed_rtt / 8 < TUN_ACK_HOLD) {
        c->hold_until = now + TUN_ACK_HOLD;
        c->hold_bytes = rx;
    } else if (!start) {
        c->hold_bytes += rx;
        if (c->hold_bytes >= TUN_ACK_HOLD_BYTES || now >= c->hold_until || c->want_close)
            c->hold_until = 0;
    }
    if (!c->hold_until || c->sendq_head || c->dq_head)
        return 0;
    /* Packets in flight: skip the write only if no ACK came since the last flush (the flight
     * did not shrink), as an ACK may have declared packets lost that need sending again. */
    return st.bytes_in_flight == 0 || st.bytes_in_flight == c->flushed_in_flight;
}

/* Deadlines closer than this are left to the next loop iteration (a 0 ms libuv timer), which
 * spins until they pass: a turn of the loop costs a microsecond or two, while arming a hardware
 * timer and taking its interrupt costs more and, in a virtual machine, wakes late. Such
 * deadlines are mostly the pacer's: a microsecond after a small packet, tens of microseconds
 * between the bursts of a fast transfer (spinning through those, rather than sleeping on the
 * timerfd, gave 7 % more single-stream throughput on the benchmark's veth; 25 us vs 100 us). */
#define TUN_SPIN_MAX (100 * NGTCP2_MICROSECONDS)

static void update_timer(struct tun_qconn *c)
{
    ngtcp2_tstamp expiry = ngtcp2_conn_get_expiry(c->conn), now = tun__now();
    if (c->hold_until && !c->sendq_head && !c->dq_head) {
        /* A held ACK may go out a little late, never early: round up, on a libuv timer (the
         * answer usually comes long before, and a libuv timer costs no system call). libuv
         * counts from the loop's time truncated to the millisecond, so a 1 ms timer fires at
         * the first wake-up after the next millisecond boundary: one round trip in four of a
         * 250 us ping-pong ran the timer (ngtcp2's expiry and a flush) for nothing. */
        uint64_t left = c->hold_until > now ? c->hold_until - now : 0;
        tun__qep_set_precise(c->ep, c, 0);
        uv_timer_start(&c->timer, timer_cb,
                       (left + NGTCP2_MILLISECONDS - 1) / NGTCP2_MILLISECONDS + 1, 0);
        return;
    }
    if (expiry == UINT64_MAX) {
        uv_timer_stop(&c->timer);
        tun__qep_set_precise(c->ep, c, 0);
        return;
    }
    /* libuv timers count whole milliseconds, but the delayed ACK (RTT / 8) and the pacer's
     * deadlines are microseconds away: beyond the spin limit those go to the endpoint's
     * precise timer. A far deadline is rounded down and re-examined when it fires. */
    if (expiry > now + TUN_SPIN_MAX && expiry - now < 2 * NGTCP2_MILLISECONDS &&
        tun__qep_set_precise(c->ep, c, expiry) == 0) {
        uv_timer_stop(&c->timer);
        return;
    }
    tun__qep_set_precise(c->ep, c, 0);
    uint64_t ms = expiry > now ? (expiry - now) / NGTCP2_MILLISECONDS : 0;
    uv_timer_start(&c->timer, timer_cb, ms, 0);
}

static int same_addr(const ngtcp2_addr *a, const struct sockaddr_storage *b, socklen_t blen)
{
    return a->addrlen == blen && memcmp(a->addr, b, blen) == 0;
}

/* Build packets and send them in GSO batches (same destination, equal sizes but the last). */
static int write_packets(struct tun_qconn *c)
{
    struct tun_qep *ep = c->ep;
    ngtcp2_path_storage ps;
    ngtcp2_path_storage_zero(&ps);
    ngtcp2_pkt_info pi;
    ngtcp2_tstamp ts = tun__now();
    size_t maxpkt = ngtcp2_conn_get_max_tx_udp_payload_size(c->conn);
    if (maxpkt > TUN_QUIC_MAX_PKT)
        maxpkt = TUN_QUIC_MAX_PKT;
    size_t quantum = ngtcp2_conn_get_send_quantum(c->conn);
    size_t maxpkts = quantum / maxpkt;
    if (maxpkts < 1)
        maxpkts = 1;
    if (maxpkts > TUN_QUIC_MAX_BATCH)
        maxpkts = TUN_QUIC_MAX_BATCH;

    uint8_t *buf = ep->txbuf;
    size_t off = 0, npkts = 0, segsize = 0;
    ngtcp2_ssize nwrite = 0;
    struct sockaddr_storage dest, dlocal;
    socklen_t destlen = 0;

    for (;;) {
        ngtcp2_vec vec[16];
        size_t nvec = 0;
        int fin = 0;
        int64_t sid = -1;
        struct tun_qstream *s = NULL;
        uint32_t flags = 0;
        ngtcp2_ssize ndatalen = -1;

        if (c->dq_head) {
            struct dgram *d = c->dq_head;
            int accepted = 0;
            ngtcp2_vec dv = {d->data, d->len};
            nwrite =
                ngtcp2_conn_writev_datagram(c->conn, &ps.path, &pi, buf + off, maxpkt, &accepted,
                                            NGTCP2_WRITE_DATAGRAM_FLAG_MORE, 0, &dv, 1, ts);
            if (accepted || (nwrite < 0 && nwrite != NGTCP2_ERR_WRITE_MORE)) {
                if (!accepted)
                    c->dgrams_dropped++;
                c->dq_head = d->next;
                if (!c->dq_head)
                    c->dq_tail = NULL;
                c->dq_len--;
                free(d);
            }
            if (nwrite == NGTCP2_ERR_WRITE_MORE)
                continue;
            if (nwrite < 0 && nwrite != NGTCP2_ERR_INVALID_ARGUMENT &&
                nwrite != NGTCP2_ERR_INVALID_STATE)
                goto fatal;
            if (nwrite < 0)
                continue;
        } else {
            s = c->sendq_head;
            if (s) {
                sid = s->id;
                nvec = tun__qstream_pending_vec(s, vec, 16, maxpkt, &fin);
                if (fin)
                    flags |= NGTCP2_WRITE_STREAM_FLAG_FIN;
                /* Keep the packet open for more only when another stream could fill it: for
                 * one stream, "more" costs a second call into ngtcp2 per packet for nothing. */
                if (s->send_next)
                    flags |= NGTCP2_WRITE_STREAM_FLAG_MORE;
            }
            nwrite = ngtcp2_conn_writev_stream(c->conn, &ps.path, &pi, buf + off, maxpkt, &ndatalen,
                                               flags, sid, vec, nvec, ts);
            if (nwrite < 0) {
                switch (nwrite) {
                case NGTCP2_ERR_STREAM_DATA_BLOCKED:
                    s->blocked = 1;
                    tun__sendq_remove(c, s);
                    continue;
                case NGTCP2_ERR_STREAM_SHUT_WR:
                case NGTCP2_ERR_STREAM_NOT_FOUND:
                    s->shut_wr = 1;
                    tun__sendq_remove(c, s);
                    continue;
                case NGTCP2_ERR_WRITE_MORE:
                    tun__qstream_sent(s, (size_t)ndatalen, fin);
                    continue;
                default:
                    goto fatal;
                }
            }
            if (s && ndatalen >= 0)
                tun__qstream_sent(s, (size_t)ndatalen, fin);
        }
        if (nwrite == 0)
            break;

        /* A packet is ready at buf + off. Does it extend the current batch? */
        int fits =
            npkts == 0 || (same_addr(&ps.path.remote, &dest, destlen) &&
                           tun_sockaddr_equal(ps.path.local.addr, (struct sockaddr *)&dlocal) &&
                           (size_t)nwrite <= segsize);
        if (!fits) {
            if (tun__qep_send(ep, c, (struct sockaddr *)&dlocal, (struct sockaddr *)&dest, buf, off,
                              segsize) != 0)
                c->write_blocked = 1;
            memmove(buf, buf + off, (size_t)nwrite);
            off = 0;
            npkts = 0;
        }
        if (npkts == 0) {
            memcpy(&dest, ps.path.remote.addr, ps.path.remote.addrlen);
            destlen = ps.path.remote.addrlen;
            memcpy(&dlocal, ps.path.local.addr, ps.path.local.addrlen);
            segsize = (size_t)nwrite;
        }
        off += (size_t)nwrite;
        npkts++;
        c->tx_packets++;
        c->tx_bytes += (size_t)nwrite;
        /* A short packet ends a GSO batch; so does reaching the pacing quantum. A packet
         * below the path's size with no stream data or datagram left behind it is the last
         * of this flush (at most control frames follow): send it before asking ngtcp2 again,
         * which saves that call's time on a request's way out. */
        int last = (size_t)nwrite < maxpkt && !c->sendq_head && !c->dq_head;
        if ((size_t)nwrite < segsize || npkts >= maxpkts || last) {
            int quantum_used = npkts >= maxpkts;
            if (tun__qep_send(ep, c, (struct sockaddr *)&dlocal, (struct sockaddr *)&dest, buf, off,
                              segsize) != 0)
                c->write_blocked = 1;
            off = 0;
            npkts = 0;
            if (quantum_used)
                break;
        }
        if (c->write_blocked)
            break;
    }
    if (npkts) {
        if (tun__qep_send(ep, c, (struct sockaddr *)&dlocal, (struct sockaddr *)&dest, buf, off,
                          segsize) != 0)
            c->write_blocked = 1;
    }
    ngtcp2_conn_update_pkt_tx_time(c->conn, ts);
    return 0;

fatal:
    tun_log_warn(QUIC, "conn %llu: write failed: %s", (unsigned long long)c->id,
                 ngtcp2_strerror((int)nwrite));
    on_conn_error(c, (int)nwrite);
    return -1;
}

static void timer_closed_cb(uv_handle_t *h)
{
    struct tun_qconn *c = h->data;
    struct tun_qep *ep = c->ep;
    free(c);
    tun__qep_handle_closed(ep);
}

/* Tell the application, tear down streams, and free the connection. */
static void finish_close(struct tun_qconn *c)
{
    struct tun_qep *ep = c->ep;
    /* Unlink first: the callbacks below may close the whole endpoint, which walks the list. */
    for (size_t i = 0; i < ep->ncid_slots; i++) {
        struct cid_slot *sl = &ep->cids[i];
        if (sl->len && sl->len != 255 && sl->conn == c)
            tun__qep_remove_cid(ep, sl->id, sl->len);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        ep->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    /* Closing marks the connection dirty once more (set_closed), possibly during the very flush
     * that got here: it must not stay in the list past its free. */
    if (c->in_dirty) {
        struct tun_qconn **pp = &ep->dirty;
        while (*pp && *pp != c)
            pp = &(*pp)->dirty_next;
        if (*pp)
            *pp = c->dirty_next;
        c->in_dirty = 0;
        c->dirty_next = NULL;
    }
    uv_timer_stop(&c->timer);
    tun__qep_set_precise(ep, c, 0);
    tun_udp_conn_close(c->uconn);
    c->uconn = NULL;
    ep->pending_closes++;
    while (c->streams) {
        struct tun_qstream *s = c->streams;
        if (!s->closed && s->cbs.on_close) {
            s->closed = 1;
            s->cbs.on_close(s, s->ud);
        }
        tun__qstream_free(s);
    }
    if (c->cbs.on_closed)
        c->cbs.on_closed(c, &c->why, c->ud);
    while (c->dq_head) {
        struct dgram *d = c->dq_head;
        c->dq_head = d->next;
        free(d);
    }
    ngtcp2_conn_del(c->conn);
    gnutls_deinit(c->tls);
    uv_close((uv_handle_t *)&c->timer, timer_closed_cb);
}

/*
 * The peer's host answered "port unreachable" (ICMP, learnt through the connected socket).
 * Before anything came back from the peer, a dial to a port where nothing listens would
 * otherwise wait for the handshake timeout (10 s) to say "no answer": end it at the second
 * report (the first retransmission, about a second in), which still lets a server that was
 * starting up in the meantime answer. ICMP is not authenticated, so an established
 * connection only logs it: the idle timeout or the peer's stateless reset ends it. (This may
 * run inside a send of the flush: set_closed only marks the connection, the flush ends it.)
 */
static void uconn_error(struct tun_udp_conn *uc, int err, void *ud)
{
    (void)uc;
    struct tun_qconn *c = ud;
    if (err != UV_ECONNREFUSED || c->closed)
        return;
    c->port_unreachable++;
    if (c->rx_packets == 0) {
        static const char why[] = "nothing is listening on that port, or a firewall rejects it "
                                  "(the host answered 'port unreachable'): check the address "
                                  "and that the server is running";
        if (c->port_unreachable >= 2)
            set_closed(c, 1, 0, 0, UV_ECONNREFUSED, why, sizeof(why) - 1);
        return;
    }
    if (!c->unreachable_logged) {
        /* A client's server going away matters to its user; a server's clients come and go. */
        c->unreachable_logged = 1;
        int srv = c->ep->is_server;
        tun_log(TUN_LOG_G_QUIC, srv ? TUN_LOG_INFO : TUN_LOG_WARN,
                "conn %llu: the %s's host reports its port unreachable: the %s may have stopped; "
                "the connection ends at the idle timeout (%u s) unless it answers again",
                (unsigned long long)c->id, srv ? "client" : "server", srv ? "client" : "server",
                (unsigned)(c->ep->cfg.idle_timeout_ms / 1000));
    }
}

/*
 * The peer's address gets a connected socket of its own (tun_udp_connect: the kernel then
 * skips a route lookup per packet both ways, and reports ICMP errors). A client opens it when
 * it dials (it chose the address); a server only once the handshake is done: an address that
 * completed a handshake has been validated, so no one can make it open sockets for spoofed
 * addresses. It is looked at again only when the path changed (uconn_stale: a new peer
 * address, a migration, a path validation); a relay path has none. An address the socket could
 * not be opened for is not tried again until then: the endpoint's socket serves it meanwhile.
 */
static void sync_uconn(struct tun_qconn *c)
{
    struct tun_qep *ep = c->ep;
    c->uconn_stale = 0;
    const ngtcp2_path *p = ngtcp2_conn_get_path(c->conn);
    const struct sockaddr *remote = (const struct sockaddr *)p->remote.addr;
    int on_socket = tun_sockaddr_equal((const struct sockaddr *)p->local.addr,
                                       (const struct sockaddr *)&ep->local);
    if (c->uconn) {
        if (on_socket && tun_sockaddr_equal(remote, tun_udp_conn_remote(c->uconn)))
            return;
        tun_udp_conn_close(c->uconn);
        c->uconn = NULL;
    }
    if (!on_socket)
        return;
    int rc = tun_udp_connect(ep->udp, remote, &c->uconn);
    if (rc == 0)
        tun_udp_conn_set_error_cb(c->uconn, uconn_error, c);
    else
        tun_log_debug(QUIC, "conn %llu: no connected socket for the peer: %s",
                      (unsigned long long)c->id, tun_strerror(rc));
}

int tun__qconn_flush(struct tun_qconn *c)
{
    if (!c->closed) {
        if (c->uconn_stale && (c->ready || c->ready_pending || !c->ep->is_server))
            sync_uconn(c);
        /* Send what is queued first: a close often follows a last message (AUTH_FAIL). */
        apply_stream_ops(c);
        if (!hold_ack(c)) {
            uint64_t sent = c->tx_packets;
            write_packets(c);
            /* What we sent carried any ACK that was due; one that was not yet due rides on the
             * next packet or goes at the renewed deadline. */
            if (c->hold_until && c->tx_packets != sent) {
                c->hold_until = tun__now() + TUN_ACK_HOLD;
                c->hold_bytes = 0;
            }
        }
        if (c->want_close && !c->closed)
            tun__qconn_abort(c, c->close_code, c->close_reason);
    }
    if (!c->closed && c->ready_pending) {
        c->ready_pending = 0;
        c->ready = 1;
        if (c->cbs.on_ready)
            c->cbs.on_ready(c, c->ud);
        /* on_ready usually opens streams and writes: send that now. */
        if (!c->closed && !c->want_close) {
            apply_stream_ops(c);
            write_packets(c);
        }
    }
    if (c->closed) {
        if (c->close_pending && !c->notified_closed) {
            c->notified_closed = 1;
            finish_close(c);
            return 1;
        }
        return 0;
    }
    ngtcp2_conn_stat st;
    ngtcp2_conn_get_conn_stat(c->conn, &st);
    c->flushed_in_flight = st.bytes_in_flight;
    update_timer(c);
    return 0;
}

void tun__qconn_expire(struct tun_qconn *c)
{
    if (c->closed)
        return;
    int rv = ngtcp2_conn_handle_expiry(c->conn, tun__now());
    if (rv != 0)
        on_conn_error(c, rv);
    tun__qep_mark_dirty(c->ep, c);
}

static void timer_cb(uv_timer_t *t)
{
    tun__qconn_expire(t->data);
}

/* ---- public connection API ------------------------------------------------------------ */

void tun_qconn_set_cbs(struct tun_qconn *c, const struct tun_qconn_cbs *cbs, void *ud)
{
    if (cbs)
        c->cbs = *cbs;
    else
        memset(&c->cbs, 0, sizeof(c->cbs));
    c->ud = ud;
}

const uint8_t *tun_qconn_peer_key(struct tun_qconn *c)
{
    return c->peer.have_key ? c->peer.key : NULL;
}

const struct sockaddr *tun_qconn_remote(struct tun_qconn *c)
{
    return (const struct sockaddr *)&c->remote;
}

uint64_t tun_qconn_id(struct tun_qconn *c)
{
    return c->id;
}

void tun_qconn_get_stats(struct tun_qconn *c, struct tun_qconn_stats *st)
{
    memset(st, 0, sizeof(*st));
    ngtcp2_conn_stat cs;
    ngtcp2_conn_get_conn_stat(c->conn, &cs);
    st->srtt_us = cs.smoothed_rtt / 1000;
    st->min_rtt_us = cs.min_rtt == UINT64_MAX ? 0 : cs.min_rtt / 1000;
    st->rttvar_us = cs.rttvar / 1000;
    st->cwnd = cs.cwnd;
    st->bytes_in_flight = cs.bytes_in_flight;
    st->tx_bytes = c->tx_bytes;
    st->rx_bytes = c->rx_bytes;
    st->tx_packets = c->tx_packets;
    st->rx_packets = c->rx_packets;
    st->rx_path_packets = c->rx_path_packets;
    st->datagrams_dropped = c->dgrams_dropped;
    st->streams = c->nstreams;
    if (c->ready)
        tun_tls_describe(c->tls, st->cipher, sizeof(st->cipher));
}

int tun_qconn_open_stream(struct tun_qconn *c, struct tun_qstream **out)
{
    if (c->closed || c->want_close)
        return TUN_ECLOSED;
    int64_t sid;
    /* Opening a stream only allocates state in ngtcp2 and sends nothing, so it is safe even
     * when called from one of our (sync) callbacks. */
    int rv = ngtcp2_conn_open_bidi_stream(c->conn, &sid, NULL);
    if (rv == NGTCP2_ERR_STREAM_ID_BLOCKED)
        return TUN_EAGAIN;
    if (rv != 0)
        return TUN_EINTERNAL;
    struct tun_qstream *s = tun__qstream_new(c, sid);
    if (!s) {
        ngtcp2_conn_shutdown_stream(c->conn, sid, 0);
        return TUN_ENOMEM;
    }
    ngtcp2_conn_set_stream_user_data(c->conn, sid, s);
    *out = s;
    return 0;
}

size_t tun_qconn_max_datagram(struct tun_qconn *c)
{
    const ngtcp2_transport_params *p = ngtcp2_conn_get_remote_transport_params(c->conn);
    if (!p || p->max_datagram_frame_size == 0)
        return 0;
    size_t maxpkt = ngtcp2_conn_get_path_max_tx_udp_payload_size(c->conn);
    /* Short header (1 + CID) + packet number (up to 4) + AEAD tag (16) + DATAGRAM frame type
     * and length (1 + 2): what remains is payload. */
    size_t overhead = 1 + TUN_QUIC_CIDLEN + 4 + 16 + 3;
    size_t room = maxpkt > overhead ? maxpkt - overhead : 0;
    if (room > p->max_datagram_frame_size)
        room = (size_t)p->max_datagram_frame_size;
    return room;
}

int tun_qconn_send_datagram(struct tun_qconn *c, const uint8_t *data, size_t len)
{
    if (c->closed)
        return TUN_ECLOSED;
    if (len > tun_qconn_max_datagram(c))
        return TUN_ETOOBIG;
    if (c->dq_len >= c->ep->cfg.datagram_queue) {
        c->dgrams_dropped++;
        return TUN_EAGAIN;
    }
    struct dgram *d = malloc(sizeof(*d) + len);
    if (!d)
        return TUN_ENOMEM;
    d->next = NULL;
    d->len = len;
    memcpy(d->data, data, len);
    if (c->dq_tail)
        c->dq_tail->next = d;
    else
        c->dq_head = d;
    c->dq_tail = d;
    c->dq_len++;
    tun__qep_mark_dirty(c->ep, c);
    return 0;
}

int tun_qconn_migrate(struct tun_qconn *c, const struct sockaddr *local,
                      const struct sockaddr *remote, int validate)
{
    if (c->closed || c->want_close)
        return TUN_ECLOSED;
    ngtcp2_path path = {
        {(ngtcp2_sockaddr *)local, tun_sockaddr_len(local)},
        {(ngtcp2_sockaddr *)remote, tun_sockaddr_len(remote)},
        NULL,
    };
    /* Safe outside callbacks only: migrate is never called from one of ours (sync callbacks
     * run inside packet processing, and the contract of quic.h forbids it there). */
    int rv = validate ? ngtcp2_conn_initiate_migration(c->conn, &path, tun__now())
                      : ngtcp2_conn_initiate_immediate_migration(c->conn, &path, tun__now());
    switch (rv) {
    case 0:
        memcpy(&c->remote, remote, tun_sockaddr_len(remote));
        c->remotelen = tun_sockaddr_len(remote);
        c->uconn_stale = 1;
        tun__qep_mark_dirty(c->ep, c);
        return 0;
    case NGTCP2_ERR_INVALID_STATE:
    case NGTCP2_ERR_CONN_ID_BLOCKED:
        return TUN_EAGAIN;
    case NGTCP2_ERR_INVALID_ARGUMENT:
        return TUN_EINVAL;
    default:
        return TUN_EINTERNAL;
    }
}

void tun_qconn_path(struct tun_qconn *c, struct sockaddr_storage *local,
                    struct sockaddr_storage *remote)
{
    const ngtcp2_path *p = ngtcp2_conn_get_path(c->conn);
    memset(local, 0, sizeof(*local));
    memset(remote, 0, sizeof(*remote));
    memcpy(local, p->local.addr, p->local.addrlen);
    memcpy(remote, p->remote.addr, p->remote.addrlen);
}

void tun_qconn_close(struct tun_qconn *c, uint64_t code, const char *reason)
{
    if (c->closed || c->want_close)
        return;
    c->want_close = 1;
    c->close_code = code;
    snprintf(c->close_reason, sizeof(c->close_reason), "%s", reason ? reason : "");
    tun__qep_mark_dirty(c->ep, c);
}
