#include "fwd/client.h"
#include "fwd/flow.h"
#include "fwd/splice.h"
#include "net/busypoll.h"
#include "proto/msg.h"
#include "util/error.h"
#include "util/log.h"
#include "util/sockaddr.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FWDS    64
#define MAX_WAITING 256 /* accepted TCP connections held until the session is ready */

struct fwd;

/* A local TCP connection waiting for OPEN_OK. */
struct tcpconn {
    struct fwd *fw;
    uv_tcp_t *tcp;
    struct tun_qstream *s;
    struct tun_msg_reader rd;
    struct tcpconn *next; /* waiting list */
};

struct flowref {
    struct tun_flow *f;
    struct fwd *fw;
    struct flowref *next, *prev;
};

struct fwd {
    struct tun_fwd_client *cl;
    int index, udp;
    char source[300];
    uv_tcp_t tcp;
    uv_udp_t udpsock;
    int open;
    struct flowref *flows;
};

struct tun_fwd_client {
    uv_loop_t *loop;
    struct tun_qep *ep;
    struct tun_qconn *qc;
    struct tun_fwd_client_config cfg;
    struct tun_fwd_client_cbs cbs;
    void *ud;
    char token[TUN_MSG_MAX_TOKEN + 1];
    struct tun_qstream *auth;
    struct tun_msg_reader auth_rd;
    int ready, closed, closing;
    unsigned spare; /* addresses the caller may still redial */
    int may_redial; /* the last attempt failed in a way another address may not */
    struct fwd *fwds[MAX_FWDS];
    int nfwds;
    struct tcpconn *waiting, *waiting_tail;
    int nwaiting;
    struct tun_flow_map flows;
    int pending_closes;
    void (*closed_cb)(void *);
    void *closed_ud;
};

void tun_fwd_client_config_default(struct tun_fwd_client_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    tun_quic_config_default(&cfg->quic);
    cfg->flow_idle_ms = 60000;
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

/* ---- TCP forwards -----------------------------------------------------------------------------
 */

static void tcpconn_free(struct tcpconn *tc, int close_tcp)
{
    if (close_tcp && tc->tcp)
        uv_close((uv_handle_t *)tc->tcp, free_handle);
    tun_msg_reader_free(&tc->rd);
    free(tc);
}

static void splice_done(struct tun_splice *sp, uint64_t up, uint64_t down, int reset, void *ud)
{
    (void)sp;
    (void)ud;
    tun_log_debug(FWD, "connection closed: %llu bytes up, %llu down%s", (unsigned long long)up,
                  (unsigned long long)down, reset ? " (reset)" : "");
}

static void tc_on_data(struct tun_qstream *s, const uint8_t *data, size_t len, void *ud)
{
    struct tcpconn *tc = ud;
    struct tun_fwd_client *cl = tc->fw->cl;
    struct tun_msg m;
    size_t total = len;
    int rc = tun_msg_read(&tc->rd, &data, &len, &m);
    if (rc == 0) {
        tun_qstream_consume(s, total);
        return;
    }
    tun_qstream_consume(s, total - len); /* the splice accounts for what follows */
    if (rc > 0 && m.type == TUN_MSG_OPEN_OK && m.len == 0) {
        uv_tcp_t *tcp = tc->tcp;
        tc->tcp = NULL;
        tcpconn_free(tc, 0);
        if (tun_splice_start(tcp, s, data, len, splice_done, NULL, NULL) != 0) {
            uv_close((uv_handle_t *)tcp, free_handle);
            tun_qstream_reset(s, TUN_RESET_CLOSED);
        }
        return;
    }
    if (rc > 0 && m.type == TUN_MSG_OPEN_FAIL && m.len >= 1) {
        char reason[TUN_MSG_MAX_CONTROL];
        memcpy(reason, m.body + 1, m.len - 1u);
        reason[m.len - 1u] = '\0';
        if (cl->cbs.on_rejected)
            cl->cbs.on_rejected(cl, tc->fw->index, m.body[0], reason, cl->ud);
    } else {
        tun_log_warn(FWD, "stream %lld: unexpected answer from the server",
                     (long long)tun_qstream_id(s));
    }
    tun_qstream_reset(s, TUN_RESET_CLOSED);
}

static void tc_on_close(struct tun_qstream *s, void *ud)
{
    (void)s;
    tcpconn_free(ud, 1);
}

static void tc_on_reset(struct tun_qstream *s, uint64_t code, void *ud)
{
    (void)code;
    (void)ud;
    tun_qstream_reset(s, TUN_RESET_CLOSED);
}

static void send_open(struct tun_qstream *s, const char *source)
{
    uint8_t buf[TUN_MSG_HEADER + 300];
    int n = tun_msg_encode(TUN_MSG_OPEN, source, strlen(source), buf, sizeof(buf));
    if (n > 0)
        tun_qstream_write(s, buf, (size_t)n);
}

static void start_tcpconn(struct tcpconn *tc)
{
    struct tun_fwd_client *cl = tc->fw->cl;
    struct tun_qstream *s;
    int rc = tun_qconn_open_stream(cl->qc, &s);
    if (rc != 0) {
        tun_log_warn(FWD, "cannot open a stream for a new connection: %s (too many at once?)",
                     tun_strerror(rc));
        tcpconn_free(tc, 1);
        return;
    }
    tc->s = s;
    struct tun_qstream_cbs cbs = {
        .on_data = tc_on_data, .on_reset = tc_on_reset, .on_close = tc_on_close};
    tun_qstream_set_cbs(s, &cbs, tc);
    send_open(s, tc->fw->source);
}

static void on_tcp_connection(uv_stream_t *server, int status)
{
    struct fwd *fw = server->data;
    struct tun_fwd_client *cl = fw->cl;
    if (status < 0)
        return;
    uv_tcp_t *tcp = malloc(sizeof(*tcp));
    if (!tcp || uv_tcp_init(cl->loop, tcp) != 0) {
        free(tcp);
        return;
    }
    if (uv_accept(server, (uv_stream_t *)tcp) != 0) {
        uv_close((uv_handle_t *)tcp, free_handle);
        return;
    }
    struct tcpconn *tc = calloc(1, sizeof(*tc));
    if (!tc || (cl->closed && !cl->may_redial) || (!cl->ready && cl->nwaiting >= MAX_WAITING)) {
        free(tc);
        uv_close((uv_handle_t *)tcp, free_handle);
        return;
    }
    tc->fw = fw;
    tc->tcp = tcp;
    tcp->data = tc;
    tun_msg_reader_init(&tc->rd, 0);
    if (cl->ready) {
        start_tcpconn(tc);
        return;
    }
    /* Not authenticated yet: the connection waits (the client reads nothing from it). */
    if (cl->waiting_tail)
        cl->waiting_tail->next = tc;
    else
        cl->waiting = tc;
    cl->waiting_tail = tc;
    cl->nwaiting++;
}

/* ---- UDP forwards ---------------------------------------------------------------------------- */

static void part_closed(struct tun_fwd_client *cl);

static void flow_deliver(struct tun_flow *f, const struct sockaddr *to, const uint8_t *data,
                         size_t len, void *ud)
{
    (void)f;
    struct flowref *fr = ud;
    if (!fr->fw->open)
        return;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    uv_udp_try_send(&fr->fw->udpsock, &b, 1, to);
}

static void flow_done(struct tun_flow *f, uint64_t up, uint64_t down, void *ud)
{
    struct flowref *fr = ud;
    struct fwd *fw = fr->fw;
    tun_flow_map_del(&fw->cl->flows, f);
    if (fr->prev)
        fr->prev->next = fr->next;
    else
        fw->flows = fr->next;
    if (fr->next)
        fr->next->prev = fr->prev;
    tun_log_debug(FWD, "UDP flow closed: %llu bytes up, %llu down", (unsigned long long)up,
                  (unsigned long long)down);
    free(fr);
    struct tun_fwd_client *cl = fw->cl;
    /* A forward whose socket already closed lives on only for its flows. */
    if (!fw->open && !fw->flows)
        free(fw);
    part_closed(cl);
}

static void flow_result(struct tun_flow *f, int ok, int code, const char *reason, void *ud)
{
    struct flowref *fr = ud;
    struct tun_fwd_client *cl = fr->fw->cl;
    if (ok) {
        tun_flow_map_put(&cl->flows, f);
        return;
    }
    if (cl->cbs.on_rejected)
        cl->cbs.on_rejected(cl, fr->fw->index, code, reason, cl->ud);
}

static void udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    tun_flow_udp_alloc(h, hint, buf);
}

static void on_udp_recv(uv_udp_t *u, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from,
                        unsigned flags)
{
    (void)flags;
    struct fwd *fw = u->data;
    struct tun_fwd_client *cl = fw->cl;
    if (n < 0 || !from || !cl->ready || cl->closed)
        return;
    tun_busypoll_kick(u->loop, (size_t)n);
    struct flowref *fr = fw->flows;
    for (; fr; fr = fr->next)
        if (tun_sockaddr_equal(tun_flow_sender(fr->f), from))
            break;
    if (!fr) {
        /* A new sender: its own flow, so replies go back to it and only to it. */
        struct tun_qstream *s;
        if (tun_qconn_open_stream(cl->qc, &s) != 0)
            return;
        fr = calloc(1, sizeof(*fr));
        if (!fr) {
            tun_qstream_reset(s, TUN_RESET_CLOSED);
            return;
        }
        fr->fw = fw;
        if (tun_flow_client_new(cl->loop, s, from, cl->cfg.flow_idle_ms, flow_deliver, flow_done,
                                fr, &fr->f) != 0) {
            free(fr);
            tun_qstream_reset(s, TUN_RESET_CLOSED);
            return;
        }
        tun_flow_set_result_cb(fr->f, flow_result);
        cl->pending_closes++; /* released in flow_done */
        fr->next = fw->flows;
        if (fw->flows)
            fw->flows->prev = fr;
        fw->flows = fr;
        send_open(s, fw->source);
    }
    tun_flow_to_peer(fr->f, (const uint8_t *)buf->base, (size_t)n);
}

/* ---- connection and authentication ------------------------------------------------------------
 */

static void auth_on_data(struct tun_qstream *s, const uint8_t *data, size_t len, void *ud)
{
    struct tun_fwd_client *cl = ud;
    tun_qstream_consume(s, len);
    if (cl->ready)
        return;
    struct tun_msg m;
    int rc = tun_msg_read(&cl->auth_rd, &data, &len, &m);
    if (rc == 0)
        return;
    if (rc > 0 && m.type == TUN_MSG_AUTH_OK) {
        cl->ready = 1;
        tun_qstream_finish(s);
        while (cl->waiting) {
            struct tcpconn *tc = cl->waiting;
            cl->waiting = tc->next;
            tc->next = NULL;
            start_tcpconn(tc);
        }
        cl->waiting_tail = NULL;
        cl->nwaiting = 0;
        if (cl->cbs.on_ready)
            cl->cbs.on_ready(cl, cl->ud);
        return;
    }
    if (rc > 0 && m.type == TUN_MSG_AUTH_FAIL && m.len >= 1) {
        char reason[TUN_MSG_MAX_CONTROL];
        memcpy(reason, m.body + 1, m.len - 1u);
        reason[m.len - 1u] = '\0';
        if (cl->cbs.on_auth_failed)
            cl->cbs.on_auth_failed(cl, m.body[0], reason, cl->ud);
        return;
    }
    tun_log_warn(AUTH, "unexpected answer to authentication");
    tun_qconn_close(cl->qc, TUN_CLOSE_PROTOCOL, "protocol_error");
}

static void auth_on_close(struct tun_qstream *s, void *ud)
{
    (void)s;
    ((struct tun_fwd_client *)ud)->auth = NULL;
}

static void conn_on_ready(struct tun_qconn *qc, void *ud)
{
    struct tun_fwd_client *cl = ud;
    if (tun_qconn_open_stream(qc, &cl->auth) != 0) {
        tun_qconn_close(qc, TUN_CLOSE_PROTOCOL, "cannot open the authentication stream");
        return;
    }
    struct tun_qstream_cbs cbs = {.on_data = auth_on_data, .on_close = auth_on_close};
    tun_qstream_set_cbs(cl->auth, &cbs, cl);
    uint8_t body[1 + TUN_MSG_MAX_TOKEN];
    size_t tl = strlen(cl->token);
    body[0] = TUN_PROTO_VERSION;
    memcpy(body + 1, cl->token, tl);
    uint8_t buf[TUN_MSG_HEADER + sizeof(body)];
    int n = tun_msg_encode(TUN_MSG_AUTH, body, 1 + tl, buf, sizeof(buf));
    sodium_memzero(body, sizeof(body));
    if (n > 0)
        tun_qstream_write(cl->auth, buf, (size_t)n);
    sodium_memzero(buf, sizeof(buf));
}

static void conn_on_datagram(struct tun_qconn *qc, const uint8_t *data, size_t len, void *ud)
{
    (void)qc;
    struct tun_fwd_client *cl = ud;
    uint64_t id;
    size_t n = tun_varint_decode(data, len, &id);
    if (n == 0)
        return;
    struct tun_flow *f = tun_flow_map_get(&cl->flows, id);
    if (f)
        tun_flow_from_peer(f, data + n, len - n);
}

/* Close the accepted local connections that still wait for the session. */
static void drop_waiting(struct tun_fwd_client *cl)
{
    while (cl->waiting) {
        struct tcpconn *tc = cl->waiting;
        cl->waiting = tc->next;
        tcpconn_free(tc, 1);
    }
    cl->waiting_tail = NULL;
    cl->nwaiting = 0;
}

/* Whether a failed attempt says nothing about another address of the same server: no answer
 * or nothing listening. An identity mismatch, a TLS failure or a close by the server does. */
static int redialable(const struct tun_qclose_info *why)
{
    return why->local && !why->app &&
           (why->err == TUN_ETIMEDOUT || why->err == UV_ECONNREFUSED ||
            why->err == UV_ENETUNREACH || why->err == UV_EHOSTUNREACH);
}

static void conn_on_closed(struct tun_qconn *qc, const struct tun_qclose_info *why, void *ud)
{
    (void)qc;
    struct tun_fwd_client *cl = ud;
    cl->closed = 1;
    cl->qc = NULL;
    cl->auth = NULL;
    cl->may_redial = !cl->ready && !cl->closing && cl->spare > 0 && redialable(why);
    if (!cl->may_redial)
        drop_waiting(cl);
    if (cl->cbs.on_closed)
        cl->cbs.on_closed(cl, why, cl->ud);
}

int tun_fwd_client_new(uv_loop_t *loop, const struct sockaddr *server, const uint8_t server_key[32],
                       const uint8_t secret[32], const char *token,
                       const struct tun_fwd_client_config *cfg,
                       const struct tun_fwd_client_cbs *cbs, void *ud, struct tun_fwd_client **out)
{
    size_t tl = strlen(token);
    if (tl == 0 || tl > TUN_MSG_MAX_TOKEN)
        return TUN_EINVAL;
    struct tun_fwd_client *cl = calloc(1, sizeof(*cl));
    if (!cl)
        return TUN_ENOMEM;
    cl->loop = loop;
    if (cfg)
        cl->cfg = *cfg;
    else
        tun_fwd_client_config_default(&cl->cfg);
    if (cbs)
        cl->cbs = *cbs;
    cl->ud = ud;
    memcpy(cl->token, token, tl + 1);
    tun_msg_reader_init(&cl->auth_rd, 0);
    struct sockaddr_storage any;
    memset(&any, 0, sizeof(any));
    int rc;
    cl->spare = cl->cfg.spare_addrs;
    if (server) {
        if (cl->cfg.bind.ss_family)
            memcpy(&any, &cl->cfg.bind, sizeof(any));
        else
            any.ss_family = cl->cfg.dual_stack ? AF_INET6 : server->sa_family;
        rc =
            tun_qep_new(loop, (struct sockaddr *)&any, secret, 0, &cl->cfg.quic, NULL, cl, &cl->ep);
        if (rc == 0)
            rc = tun_fwd_client_connect(cl, server, server_key);
    } else {
        /* The address is not known yet (ICE will find it): one dual-stack socket serves both
         * families; where IPv6 is disabled, IPv4 alone. */
        any.ss_family = AF_INET6;
        rc =
            tun_qep_new(loop, (struct sockaddr *)&any, secret, 0, &cl->cfg.quic, NULL, cl, &cl->ep);
        if (rc != 0) {
            any.ss_family = AF_INET;
            rc = tun_qep_new(loop, (struct sockaddr *)&any, secret, 0, &cl->cfg.quic, NULL, cl,
                             &cl->ep);
        }
    }
    if (rc != 0) {
        if (cl->ep)
            tun_qep_close(cl->ep, 0, NULL, NULL);
        sodium_memzero(cl->token, sizeof(cl->token));
        free(cl);
        return rc;
    }
    *out = cl;
    return 0;
}

int tun_fwd_client_connect(struct tun_fwd_client *cl, const struct sockaddr *server,
                           const uint8_t server_key[32])
{
    return tun_fwd_client_connect_via(cl, NULL, server, server_key);
}

int tun_fwd_client_redial(struct tun_fwd_client *cl, const struct sockaddr *server,
                          const uint8_t server_key[32])
{
    if (!cl->may_redial || cl->closing) /* may_redial: the last connection closed, qc NULL */
        return TUN_EINVAL;
    cl->may_redial = 0;
    cl->spare--;
    cl->closed = 0;
    /* Whatever the last attempt left half-read of the server's answer is void. */
    tun_msg_reader_free(&cl->auth_rd);
    tun_msg_reader_init(&cl->auth_rd, 0);
    int rc = tun_fwd_client_connect(cl, server, server_key);
    if (rc != 0) {
        cl->closed = 1;
        drop_waiting(cl);
    }
    return rc;
}

int tun_fwd_client_connect_via(struct tun_fwd_client *cl, const struct sockaddr *local,
                               const struct sockaddr *server, const uint8_t server_key[32])
{
    if (cl->qc || cl->closed || cl->closing)
        return TUN_EINVAL;
    struct tun_qconn_cbs ccbs = {
        .on_ready = conn_on_ready,
        .on_datagram = conn_on_datagram,
        .on_closed = conn_on_closed,
    };
    return tun_qep_connect_via(cl->ep, local, server, server_key, &ccbs, cl, &cl->qc);
}

struct tun_qep *tun_fwd_client_endpoint(struct tun_fwd_client *cl)
{
    return cl->ep;
}

struct tun_qconn *tun_fwd_client_conn(struct tun_fwd_client *cl)
{
    return cl->closed ? NULL : cl->qc;
}

static void fwd_failed_closed(uv_handle_t *h)
{
    free(h->data);
}

int tun_fwd_client_add(struct tun_fwd_client *cl, const struct sockaddr *listen, const char *source)
{
    if (cl->nfwds >= MAX_FWDS)
        return TUN_ETOOBIG;
    size_t sl = strlen(source);
    int udp;
    char host[256];
    uint16_t port;
    if (sl >= 300 ||
        tun_msg_parse_source((const uint8_t *)source, sl, &udp, host, sizeof(host), &port) != 0)
        return TUN_EFORMAT;
    struct fwd *fw = calloc(1, sizeof(*fw));
    if (!fw)
        return TUN_ENOMEM;
    fw->cl = cl;
    fw->udp = udp;
    fw->index = cl->nfwds;
    memcpy(fw->source, source, sl + 1);
    int rc;
    if (udp) {
        /* recvmmsg: a burst from a local application costs one syscall, not one each. */
        rc = uv_udp_init_ex(cl->loop, &fw->udpsock, listen->sa_family | UV_UDP_RECVMMSG);
        fw->udpsock.data = fw;
        if (rc == 0)
            rc = uv_udp_bind(&fw->udpsock, listen, 0);
        if (rc == 0)
            tun_flow_udp_buffers(&fw->udpsock);
        if (rc == 0)
            rc = uv_udp_recv_start(&fw->udpsock, udp_alloc, on_udp_recv);
    } else {
        rc = uv_tcp_init(cl->loop, &fw->tcp);
        fw->tcp.data = fw;
        if (rc == 0)
            rc = uv_tcp_bind(&fw->tcp, listen, 0);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&fw->tcp, 511, on_tcp_connection);
    }
    if (rc != 0) {
        uv_close(udp ? (uv_handle_t *)&fw->udpsock : (uv_handle_t *)&fw->tcp, fwd_failed_closed);
        return rc;
    }
    fw->open = 1;
    cl->fwds[cl->nfwds++] = fw;
    cl->pending_closes++; /* released when the listener closes */
    return fw->index;
}

int tun_fwd_client_listen_addr(struct tun_fwd_client *cl, int i, struct sockaddr_storage *ss)
{
    if (i < 0 || i >= cl->nfwds)
        return TUN_EINVAL;
    struct fwd *fw = cl->fwds[i];
    int len = sizeof(*ss);
    return fw->udp ? uv_udp_getsockname(&fw->udpsock, (struct sockaddr *)ss, &len)
                   : uv_tcp_getsockname(&fw->tcp, (struct sockaddr *)ss, &len);
}

int tun_fwd_client_ready(struct tun_fwd_client *cl)
{
    return cl->ready && !cl->closed;
}

int tun_fwd_client_stats(struct tun_fwd_client *cl, struct tun_qconn_stats *st,
                         struct sockaddr_storage *remote)
{
    if (!cl->qc)
        return TUN_ECLOSED;
    tun_qconn_get_stats(cl->qc, st);
    if (remote) {
        const struct sockaddr *ra = tun_qconn_remote(cl->qc);
        memcpy(remote, ra, tun_sockaddr_len(ra));
    }
    return 0;
}

static void part_closed(struct tun_fwd_client *cl)
{
    if (--cl->pending_closes > 0 || !cl->closing)
        return;
    void (*cb)(void *) = cl->closed_cb;
    void *cud = cl->closed_ud;
    tun_flow_map_free(&cl->flows);
    tun_msg_reader_free(&cl->auth_rd);
    sodium_memzero(cl->token, sizeof(cl->token));
    free(cl);
    if (cb)
        cb(cud);
}

static void fwd_closed(uv_handle_t *h)
{
    struct fwd *fw = h->data;
    struct tun_fwd_client *cl = fw->cl;
    fw->open = 0;
    if (!fw->flows)
        free(fw);
    part_closed(cl);
}

static void ep_closed(void *ud)
{
    part_closed(ud);
}

void tun_fwd_client_close(struct tun_fwd_client *cl, void (*closed)(void *ud), void *ud)
{
    if (cl->closing)
        return;
    cl->closing = 1;
    cl->closed_cb = closed;
    cl->closed_ud = ud;
    /* No callback after close: the layer above may free its side right away. */
    memset(&cl->cbs, 0, sizeof(cl->cbs));
    cl->pending_closes++; /* held while closing starts */
    for (int i = 0; i < cl->nfwds; i++) {
        struct fwd *fw = cl->fwds[i];
        uv_close(fw->udp ? (uv_handle_t *)&fw->udpsock : (uv_handle_t *)&fw->tcp, fwd_closed);
    }
    cl->nfwds = 0;
    /* Never dialled (a deferred client whose ICE failed): no connection will close and
     * release the local connections still waiting for it. */
    if (!cl->qc)
        drop_waiting(cl);
    cl->pending_closes++;
    tun_qep_close(cl->ep, TUN_CLOSE_DONE, ep_closed, cl);
    part_closed(cl);
}
