#include "fwd/server.h"
#include "fwd/flow.h"
#include "fwd/splice.h"
#include "proto/msg.h"
#include "util/error.h"
#include "util/log.h"
#include "util/sockaddr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HE_DELAY_MS 250 /* Happy Eyeballs: the next address gets a try after this long */
#define HE_MAX      16

enum chan_state { CH_OPEN, CH_PENDING, CH_CONNECTING, CH_SPLICING, CH_FLOW, CH_DONE };

struct chan;

struct attempt {
    uv_connect_t req;
    uv_tcp_t *tcp;
    struct chan *ch;
    int done;
};

struct session {
    struct tun_fwd_server *srv;
    struct tun_qconn *qc;
    uint64_t id;
    struct session *next, *prev;
    int authed, auth_decided, closed;
    struct tun_qstream *auth_stream;
    struct tun_msg_reader auth_rd;
    uv_timer_t *auth_timer;
    struct chan *chans;
    uint32_t nchans;
    uint32_t next_flow;
    struct tun_flow_map flows;
    uint64_t up, down;
};

struct chan {
    struct tun_fwd_server *srv;
    struct session *sess; /* NULL once the session is gone and the chan only drains */
    struct tun_qstream *s;
    int64_t sid;
    struct chan *next, *prev;
    enum chan_state state;
    struct tun_msg_reader rd;
    struct tun_fwd_request req;
    int counted; /* holds one of max_active */
    /* connecting */
    struct sockaddr_storage addrs[HE_MAX];
    size_t naddrs, next_addr, live_attempts;
    uv_timer_t *he_timer;
    struct attempt *attempts[HE_MAX];
    int last_err;
    /* splicing / flow */
    struct tun_splice *splice;
    struct tun_flow *flow;
    char target[300];
};

struct tun_fwd_server {
    uv_loop_t *loop;
    struct tun_qep *ep;
    struct tun_fwd_server_config cfg;
    struct tun_fwd_server_cbs cbs;
    void *ud;
    struct session *sessions;
    uint32_t active;
    /* Channels allocated and not yet freed. A splice's TCP handle may still be closing when the
     * endpoint has closed: the server is freed only when both are gone. */
    size_t nchans;
    int ep_gone;
    void (*closed_cb)(void *);
    void *closed_ud;
};

static void server_free(struct tun_fwd_server *srv);

void tun_fwd_server_config_default(struct tun_fwd_server_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    tun_quic_config_default(&cfg->quic);
    cfg->max_active = 100;
    cfg->auth_timeout_ms = 10000;
    cfg->flow_idle_ms = 60000;
    cfg->connect_timeout_ms = 10000;
}

static void handle_closed_free(uv_handle_t *h)
{
    free(h);
}

static struct session *find_session(struct tun_fwd_server *srv, uint64_t id)
{
    for (struct session *s = srv->sessions; s; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

static struct chan *find_chan(struct session *ss, int64_t sid)
{
    for (struct chan *c = ss->chans; c; c = c->next)
        if (c->sid == sid)
            return c;
    return NULL;
}

/* Send one control message on a stream. */
static void send_msg(struct tun_qstream *s, uint8_t type, const void *body, size_t len)
{
    uint8_t buf[TUN_MSG_HEADER + TUN_MSG_MAX_CONTROL];
    if (len > TUN_MSG_MAX_CONTROL)
        len = TUN_MSG_MAX_CONTROL;
    int n = tun_msg_encode(type, body, len, buf, sizeof(buf));
    if (n > 0)
        tun_qstream_write(s, buf, (size_t)n);
}

static void send_fail(struct tun_qstream *s, uint8_t type, int code, const char *reason)
{
    uint8_t body[TUN_MSG_MAX_CONTROL];
    size_t rl = reason ? strlen(reason) : 0;
    if (rl > sizeof(body) - 1)
        rl = sizeof(body) - 1;
    body[0] = (uint8_t)code;
    memcpy(body + 1, reason, rl);
    send_msg(s, type, body, rl + 1);
}

/* ---- channels ------------------------------------------------------------------------------ */

static void chan_info(struct chan *ch, struct tun_fwd_chan_info *info, uint64_t up, uint64_t down,
                      int reset)
{
    memset(info, 0, sizeof(*info));
    info->session = ch->req.session;
    info->stream = ch->sid;
    info->udp = ch->req.udp;
    snprintf(info->target, sizeof(info->target), "%s", ch->target);
    info->up = up;
    info->down = down;
    info->reset = reset;
}

static void chan_free(struct chan *ch)
{
    struct session *ss = ch->sess;
    struct tun_fwd_server *srv = ch->srv;
    if (ss) { /* else orphaned when its session closed */
        if (ch->counted)
            srv->active--;
        if (ch->prev)
            ch->prev->next = ch->next;
        else
            ss->chans = ch->next;
        if (ch->next)
            ch->next->prev = ch->prev;
        ss->nchans--;
    }
    tun_msg_reader_free(&ch->rd);
    free(ch);
    if (--srv->nchans == 0 && srv->ep_gone)
        server_free(srv);
}

/* The chan is finished once its stream is gone and no handle of its own is open. */
static void chan_maybe_free(struct chan *ch)
{
    if (ch->s || ch->he_timer || ch->live_attempts || ch->splice || ch->flow)
        return;
    chan_free(ch);
}

static void stop_connecting(struct chan *ch)
{
    if (ch->he_timer) {
        uv_close((uv_handle_t *)ch->he_timer, handle_closed_free);
        ch->he_timer = NULL;
    }
    for (size_t i = 0; i < HE_MAX; i++) {
        struct attempt *a = ch->attempts[i];
        if (a && !a->done) {
            a->done = 1;
            uv_close((uv_handle_t *)a->tcp, handle_closed_free);
        }
    }
}

static void splice_done(struct tun_splice *sp, uint64_t up, uint64_t down, int reset, void *ud)
{
    (void)sp;
    struct chan *ch = ud;
    struct tun_fwd_server *srv = ch->srv;
    ch->splice = NULL;
    ch->s = NULL; /* the splice owned the stream's callbacks until it closed */
    if (ch->sess) {
        ch->sess->up += up;
        ch->sess->down += down;
    }
    if (srv->cbs.on_chan_closed) {
        struct tun_fwd_chan_info info;
        chan_info(ch, &info, up, down, reset);
        srv->cbs.on_chan_closed(srv, &info, srv->ud);
    }
    ch->state = CH_DONE;
    chan_maybe_free(ch);
}

static void flow_done(struct tun_flow *f, uint64_t up, uint64_t down, void *ud)
{
    struct chan *ch = ud;
    struct tun_fwd_server *srv = ch->srv;
    ch->flow = NULL;
    ch->s = NULL;
    if (ch->sess) {
        tun_flow_map_del(&ch->sess->flows, f);
        ch->sess->up += up;
        ch->sess->down += down;
    }
    if (srv->cbs.on_chan_closed) {
        struct tun_fwd_chan_info info;
        chan_info(ch, &info, up, down, 0);
        srv->cbs.on_chan_closed(srv, &info, srv->ud);
    }
    ch->state = CH_DONE;
    chan_maybe_free(ch);
}

static void chan_fail(struct chan *ch, int code, const char *reason)
{
    struct tun_fwd_server *srv = ch->srv;
    stop_connecting(ch);
    if (ch->s) {
        send_fail(ch->s, TUN_MSG_OPEN_FAIL, code, reason);
        tun_qstream_finish(ch->s);
    }
    if (srv->cbs.on_refused && code != TUN_CODE_DENIED)
        srv->cbs.on_refused(srv, &ch->req, code, reason, srv->ud);
    ch->state = CH_DONE;
}

static void attempt_connected(uv_connect_t *req, int status);

static void start_attempt(struct chan *ch)
{
    while (ch->next_addr < ch->naddrs) {
        size_t i = ch->next_addr++;
        struct attempt *a = calloc(1, sizeof(*a));
        uv_tcp_t *tcp = malloc(sizeof(*tcp));
        if (!a || !tcp || uv_tcp_init(ch->srv->loop, tcp) != 0) {
            free(a);
            free(tcp);
            continue;
        }
        a->tcp = tcp;
        a->ch = ch;
        a->req.data = a;
        tcp->data = a;
        if (uv_tcp_connect(&a->req, tcp, (struct sockaddr *)&ch->addrs[i], attempt_connected) !=
            0) {
            uv_close((uv_handle_t *)tcp, handle_closed_free);
            free(a);
            continue;
        }
        ch->attempts[i] = a;
        ch->live_attempts++;
        return;
    }
}

static void he_timer_cb(uv_timer_t *t)
{
    struct chan *ch = t->data;
    start_attempt(ch);
    if (ch->next_addr >= ch->naddrs)
        uv_timer_stop(t);
}

static void attempt_connected(uv_connect_t *req, int status)
{
    struct attempt *a = req->data;
    struct chan *ch = a->ch;
    ch->live_attempts--;
    for (size_t i = 0; i < HE_MAX; i++)
        if (ch->attempts[i] == a)
            ch->attempts[i] = NULL;
    if (a->done) {
        /* Lost the race or cancelled: the handle is closing and frees itself. */
        free(a);
        chan_maybe_free(ch);
        return;
    }
    if (status < 0 || ch->state != CH_CONNECTING || !ch->s) {
        if (status < 0)
            ch->last_err = status;
        uv_close((uv_handle_t *)a->tcp, handle_closed_free);
        free(a);
        if (ch->state == CH_CONNECTING && ch->s) {
            if (ch->next_addr < ch->naddrs) {
                start_attempt(ch); /* failed fast: try the next address now */
            } else if (ch->live_attempts == 0) {
                char msg[400], where[300];
                tun_sockaddr_format((struct sockaddr *)&ch->addrs[0], where, sizeof(where));
                snprintf(msg, sizeof(msg), "could not connect to %s%s: %s", where,
                         ch->naddrs > 1 ? " (and the other addresses)" : "",
                         uv_strerror(ch->last_err));
                chan_fail(ch, TUN_CODE_CONNECT, msg);
            }
        }
        chan_maybe_free(ch);
        return;
    }
    /* The winner: stop the others, answer OK, splice. */
    a->done = 1;
    uv_tcp_t *tcp = a->tcp;
    free(a);
    stop_connecting(ch);
    struct sockaddr_storage peer;
    int plen = sizeof(peer);
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&peer, &plen) == 0)
        tun_sockaddr_format((struct sockaddr *)&peer, ch->target, sizeof(ch->target));
    send_msg(ch->s, TUN_MSG_OPEN_OK, NULL, 0);
    ch->state = CH_SPLICING;
    if (tun_splice_start(tcp, ch->s, NULL, 0, splice_done, ch, &ch->splice) != 0) {
        uv_close((uv_handle_t *)tcp, handle_closed_free);
        tun_qstream_reset(ch->s, TUN_RESET_CLOSED);
    }
}

/* Stream callbacks while the channel is waiting for OPEN or for a decision. */
static void chan_on_data(struct tun_qstream *s, const uint8_t *data, size_t len, void *ud);
static void chan_on_close(struct tun_qstream *s, void *ud)
{
    (void)s;
    struct chan *ch = ud;
    ch->s = NULL;
    stop_connecting(ch);
    ch->state = CH_DONE;
    chan_maybe_free(ch);
}
static void chan_on_reset(struct tun_qstream *s, uint64_t code, void *ud)
{
    (void)code;
    (void)ud;
    tun_qstream_reset(s, TUN_RESET_CLOSED);
}

static void chan_protocol_error(struct chan *ch, const char *what)
{
    tun_log_warn(FWD, "session %llu stream %lld: protocol error: %s",
                 (unsigned long long)ch->req.session, (long long)ch->sid, what);
    stop_connecting(ch);
    ch->state = CH_DONE;
    tun_qstream_reset(ch->s, TUN_RESET_PROTOCOL);
}

static void chan_on_data(struct tun_qstream *s, const uint8_t *data, size_t len, void *ud)
{
    struct chan *ch = ud;
    struct tun_fwd_server *srv = ch->srv;
    tun_qstream_consume(s, len);
    if (ch->state != CH_OPEN) {
        /* The client must wait for OPEN_OK before sending payload. */
        if (ch->state != CH_DONE)
            chan_protocol_error(ch, "data before OPEN_OK");
        return;
    }
    struct tun_msg m;
    int rc = tun_msg_read(&ch->rd, &data, &len, &m);
    if (rc == 0)
        return;
    if (rc < 0 || m.type != TUN_MSG_OPEN || len != 0) {
        chan_protocol_error(ch, rc < 0 ? tun_strerror(rc) : "expected one OPEN message");
        return;
    }
    struct tun_fwd_request *req = &ch->req;
    if (tun_msg_parse_source(m.body, m.len, &req->udp, req->host, sizeof(req->host), &req->port) !=
        0) {
        ch->state = CH_DONE;
        send_fail(s, TUN_MSG_OPEN_FAIL, TUN_CODE_BAD_REQUEST,
                  "bad source: expected tcp://host:port or udp://host:port");
        tun_qstream_finish(s);
        return;
    }
    if (srv->active >= srv->cfg.max_active) {
        char msg[128];
        snprintf(msg, sizeof(msg), "session limit reached (the server allows %u at once)",
                 srv->cfg.max_active);
        chan_fail(ch, TUN_CODE_LIMIT, msg);
        return;
    }
    srv->active++;
    ch->counted = 1;
    ch->state = CH_PENDING;
    if (srv->cbs.on_request)
        srv->cbs.on_request(srv, req, srv->ud);
}

static void session_on_stream(struct tun_qconn *qc, struct tun_qstream *s, void *ud);

/* ---- the authentication stream -------------------------------------------------------------- */

static void session_close(struct session *ss, uint64_t code, const char *reason)
{
    if (ss->closed)
        return;
    tun_qconn_close(ss->qc, code, reason);
}

static void auth_on_data(struct tun_qstream *s, const uint8_t *data, size_t len, void *ud)
{
    struct session *ss = ud;
    tun_qstream_consume(s, len);
    if (ss->auth_decided || ss->closed)
        return;
    struct tun_msg m;
    int rc = tun_msg_read(&ss->auth_rd, &data, &len, &m);
    if (rc == 0)
        return;
    if (rc < 0 || m.type != TUN_MSG_AUTH || m.len < 2 || m.len > 1 + TUN_MSG_MAX_TOKEN ||
        len != 0) {
        tun_log_warn(AUTH, "session %llu: malformed authentication message",
                     (unsigned long long)ss->id);
        ss->auth_decided = 1;
        session_close(ss, TUN_CLOSE_PROTOCOL, "protocol_error");
        return;
    }
    if (m.body[0] != TUN_PROTO_VERSION) {
        ss->auth_decided = 1;
        send_fail(s, TUN_MSG_AUTH_FAIL, TUN_CODE_BAD_REQUEST,
                  "unsupported protocol version: upgrade tunnel on one side");
        tun_qstream_finish(s);
        session_close(ss, TUN_CLOSE_PROTOCOL, "protocol_error");
        return;
    }
    ss->auth_decided = 1; /* one AUTH per connection; the answer comes from above */
    if (ss->srv->cbs.on_auth)
        ss->srv->cbs.on_auth(ss->srv, ss->id, m.body + 1, m.len - 1u, ss->srv->ud);
}

static void auth_on_close(struct tun_qstream *s, void *ud)
{
    (void)s;
    ((struct session *)ud)->auth_stream = NULL;
}

static void auth_timer_cb(uv_timer_t *t)
{
    struct session *ss = t->data;
    if (ss->authed)
        return;
    tun_log_info(AUTH, "session %llu: no authentication within %llu ms, closing",
                 (unsigned long long)ss->id, (unsigned long long)ss->srv->cfg.auth_timeout_ms);
    session_close(ss, TUN_CLOSE_AUTH_TIMEOUT, "auth_timeout");
}

static void session_on_stream(struct tun_qconn *qc, struct tun_qstream *s, void *ud)
{
    (void)qc;
    struct session *ss = ud;
    if (!ss->auth_stream && !ss->authed && !ss->auth_decided) {
        ss->auth_stream = s;
        tun_msg_reader_init(&ss->auth_rd, 0);
        struct tun_qstream_cbs cbs = {.on_data = auth_on_data, .on_close = auth_on_close};
        tun_qstream_set_cbs(s, &cbs, ss);
        return;
    }
    if (!ss->authed) {
        /* Streams before AUTH_OK are not allowed. */
        tun_qstream_reset(s, TUN_RESET_PROTOCOL);
        return;
    }
    struct chan *ch = calloc(1, sizeof(*ch));
    if (!ch) {
        tun_qstream_reset(s, TUN_RESET_CLOSED);
        return;
    }
    ch->srv = ss->srv;
    ch->srv->nchans++;
    ch->sess = ss;
    ch->s = s;
    ch->sid = tun_qstream_id(s);
    ch->state = CH_OPEN;
    ch->req.session = ss->id;
    ch->req.stream = ch->sid;
    tun_msg_reader_init(&ch->rd, 0);
    ch->next = ss->chans;
    if (ss->chans)
        ss->chans->prev = ch;
    ss->chans = ch;
    ss->nchans++;
    struct tun_qstream_cbs cbs = {
        .on_data = chan_on_data, .on_reset = chan_on_reset, .on_close = chan_on_close};
    tun_qstream_set_cbs(s, &cbs, ch);
}

static void session_on_datagram(struct tun_qconn *qc, const uint8_t *data, size_t len, void *ud)
{
    (void)qc;
    struct session *ss = ud;
    if (!ss->authed)
        return;
    uint64_t id;
    size_t n = tun_varint_decode(data, len, &id);
    if (n == 0)
        return;
    struct tun_flow *f = tun_flow_map_get(&ss->flows, id);
    if (f)
        tun_flow_from_peer(f, data + n, len - n);
}

static void session_on_ready(struct tun_qconn *qc, void *ud)
{
    struct session *ss = ud;
    (void)qc;
    if (ss->srv->cbs.on_session)
        ss->srv->cbs.on_session(ss->srv, ss->id, ss->srv->ud);
}

static void session_on_closed(struct tun_qconn *qc, const struct tun_qclose_info *why, void *ud)
{
    (void)qc;
    struct session *ss = ud;
    struct tun_fwd_server *srv = ss->srv;
    ss->closed = 1;
    if (ss->auth_timer) {
        uv_close((uv_handle_t *)ss->auth_timer, handle_closed_free);
        ss->auth_timer = NULL;
    }
    tun_msg_reader_free(&ss->auth_rd);
    /* Streams got on_close already; chans still holding handles detach from the session. */
    while (ss->chans) {
        struct chan *ch = ss->chans;
        stop_connecting(ch);
        ch->s = NULL;
        if (ch->counted) {
            srv->active--;
            ch->counted = 0;
        }
        /* Splices, flows and connect attempts still closing keep the chan until their
         * callbacks have run; it no longer belongs to the session. */
        ss->chans = ch->next;
        ss->nchans--;
        ch->next = ch->prev = NULL;
        ch->sess = NULL;
        chan_maybe_free(ch);
    }
    tun_flow_map_free(&ss->flows);
    if (srv->cbs.on_session_closed)
        srv->cbs.on_session_closed(srv, ss->id, why, srv->ud);
    if (ss->prev)
        ss->prev->next = ss->next;
    else
        srv->sessions = ss->next;
    if (ss->next)
        ss->next->prev = ss->prev;
    free(ss);
}

static void on_conn(struct tun_qep *ep, struct tun_qconn *qc, void *ud)
{
    (void)ep;
    struct tun_fwd_server *srv = ud;
    struct session *ss = calloc(1, sizeof(*ss));
    if (!ss) {
        tun_qconn_close(qc, TUN_CLOSE_SHUTDOWN, "out of memory");
        return;
    }
    ss->srv = srv;
    ss->qc = qc;
    ss->id = tun_qconn_id(qc);
    ss->next_flow = 1;
    ss->auth_timer = malloc(sizeof(*ss->auth_timer));
    if (ss->auth_timer) {
        uv_timer_init(srv->loop, ss->auth_timer);
        ss->auth_timer->data = ss;
        uv_timer_start(ss->auth_timer, auth_timer_cb, srv->cfg.auth_timeout_ms, 0);
    }
    ss->next = srv->sessions;
    if (srv->sessions)
        srv->sessions->prev = ss;
    srv->sessions = ss;
    struct tun_qconn_cbs cbs = {
        .on_ready = session_on_ready,
        .on_stream = session_on_stream,
        .on_datagram = session_on_datagram,
        .on_closed = session_on_closed,
    };
    tun_qconn_set_cbs(qc, &cbs, ss);
}

/* ---- public API ------------------------------------------------------------------------------ */

int tun_fwd_server_new(uv_loop_t *loop, const struct sockaddr *bind_addr, const uint8_t secret[32],
                       const struct tun_fwd_server_config *cfg,
                       const struct tun_fwd_server_cbs *cbs, void *ud, struct tun_fwd_server **out)
{
    struct tun_fwd_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return TUN_ENOMEM;
    srv->loop = loop;
    if (cfg)
        srv->cfg = *cfg;
    else
        tun_fwd_server_config_default(&srv->cfg);
    if (cbs)
        srv->cbs = *cbs;
    srv->ud = ud;
    struct tun_qep_cbs ecbs = {.on_conn = on_conn};
    int rc = tun_qep_new(loop, bind_addr, secret, 1, &srv->cfg.quic, &ecbs, srv, &srv->ep);
    if (rc != 0) {
        free(srv);
        return rc;
    }
    *out = srv;
    return 0;
}

struct tun_qep *tun_fwd_server_endpoint(struct tun_fwd_server *srv)
{
    return srv->ep;
}

int tun_fwd_server_local_addr(struct tun_fwd_server *srv, struct sockaddr_storage *ss)
{
    return tun_qep_local_addr(srv->ep, ss);
}

static void server_free(struct tun_fwd_server *srv)
{
    void (*cb)(void *) = srv->closed_cb;
    void *cud = srv->closed_ud;
    free(srv);
    if (cb)
        cb(cud);
}

static void ep_closed(void *ud)
{
    struct tun_fwd_server *srv = ud;
    srv->ep_gone = 1;
    if (srv->nchans == 0)
        server_free(srv);
}

void tun_fwd_server_close(struct tun_fwd_server *srv, void (*closed)(void *ud), void *ud)
{
    srv->closed_cb = closed;
    srv->closed_ud = ud;
    /* No callback after close: the layer above may free its side right away. */
    memset(&srv->cbs, 0, sizeof(srv->cbs));
    tun_qep_close(srv->ep, TUN_CLOSE_SHUTDOWN, ep_closed, srv);
}

void tun_fwd_server_set_max_active(struct tun_fwd_server *srv, uint32_t max)
{
    srv->cfg.max_active = max;
}

uint32_t tun_fwd_server_active(struct tun_fwd_server *srv)
{
    return srv->active;
}

int tun_fwd_session_auth(struct tun_fwd_server *srv, uint64_t session, int ok, int code,
                         const char *reason, uint64_t close_code)
{
    struct session *ss = find_session(srv, session);
    if (!ss || ss->closed || ss->authed)
        return TUN_EINVAL;
    if (ok) {
        ss->authed = 1;
        if (ss->auth_timer)
            uv_timer_stop(ss->auth_timer);
        if (ss->auth_stream) {
            uint8_t v = TUN_PROTO_VERSION;
            send_msg(ss->auth_stream, TUN_MSG_AUTH_OK, &v, 1);
            tun_qstream_finish(ss->auth_stream);
        }
        return 0;
    }
    if (ss->auth_stream) {
        send_fail(ss->auth_stream, TUN_MSG_AUTH_FAIL, code, reason);
        tun_qstream_finish(ss->auth_stream);
    }
    session_close(ss, close_code,
                  close_code == TUN_CLOSE_RATE_LIMITED ? "rate_limited" : "auth_failed");
    return 0;
}

int tun_fwd_session_kick(struct tun_fwd_server *srv, uint64_t session, const char *reason)
{
    struct session *ss = find_session(srv, session);
    if (!ss || ss->closed)
        return TUN_EINVAL;
    session_close(ss, TUN_CLOSE_KICKED, reason && *reason ? reason : "kicked");
    return 0;
}

static struct chan *pending_chan(struct tun_fwd_server *srv, uint64_t session, int64_t stream)
{
    struct session *ss = find_session(srv, session);
    if (!ss || ss->closed)
        return NULL;
    struct chan *ch = find_chan(ss, stream);
    return ch && ch->state == CH_PENDING && ch->s ? ch : NULL;
}

int tun_fwd_server_accept(struct tun_fwd_server *srv, uint64_t session, int64_t stream,
                          const struct sockaddr_storage *addrs, size_t naddrs)
{
    struct chan *ch = pending_chan(srv, session, stream);
    if (!ch)
        return TUN_EINVAL;
    if (naddrs == 0)
        return tun_fwd_server_reject(srv, session, stream, TUN_CODE_DENIED, "no address to use");
    if (ch->req.udp) {
        struct session *ss = ch->sess;
        uint32_t id = ss->next_flow++;
        struct tun_flow *f;
        int rc = tun_flow_server_new(srv->loop, ch->s, id, (const struct sockaddr *)&addrs[0],
                                     srv->cfg.flow_idle_ms, flow_done, ch, &f);
        tun_sockaddr_format((const struct sockaddr *)&addrs[0], ch->target, sizeof(ch->target));
        if (rc != 0) {
            char msg[400];
            snprintf(msg, sizeof(msg), "cannot open UDP socket to %s: %s", ch->target,
                     uv_strerror(rc));
            send_fail(ch->s, TUN_MSG_OPEN_FAIL, TUN_CODE_CONNECT, msg);
            ch->flow = f; /* closing; flow_done frees the chan's reference */
            return 0;
        }
        ch->flow = f;
        tun_flow_map_put(&ss->flows, f);
        uint8_t body[4] = {(uint8_t)(id >> 24), (uint8_t)(id >> 16), (uint8_t)(id >> 8),
                           (uint8_t)id};
        /* OPEN_OK goes before any UDP_DATA: the flow writes to the stream only later. */
        uint8_t buf[TUN_MSG_HEADER + 4];
        int n = tun_msg_encode(TUN_MSG_OPEN_OK, body, 4, buf, sizeof(buf));
        tun_qstream_write(ch->s, buf, (size_t)n);
        ch->state = CH_FLOW;
        return 0;
    }
    if (naddrs > HE_MAX)
        naddrs = HE_MAX;
    memcpy(ch->addrs, addrs, naddrs * sizeof(*addrs));
    ch->naddrs = naddrs;
    ch->state = CH_CONNECTING;
    ch->he_timer = malloc(sizeof(*ch->he_timer));
    if (ch->he_timer) {
        uv_timer_init(srv->loop, ch->he_timer);
        ch->he_timer->data = ch;
    }
    start_attempt(ch);
    if (ch->next_addr < ch->naddrs && ch->he_timer)
        uv_timer_start(ch->he_timer, he_timer_cb, HE_DELAY_MS, HE_DELAY_MS);
    if (ch->live_attempts == 0)
        chan_fail(ch, TUN_CODE_CONNECT, "could not start a connection");
    return 0;
}

int tun_fwd_server_reject(struct tun_fwd_server *srv, uint64_t session, int64_t stream, int code,
                          const char *reason)
{
    struct chan *ch = pending_chan(srv, session, stream);
    if (!ch)
        return TUN_EINVAL;
    send_fail(ch->s, TUN_MSG_OPEN_FAIL, code, reason);
    tun_qstream_finish(ch->s);
    ch->state = CH_DONE;
    return 0;
}

int tun_fwd_session_info(struct tun_fwd_server *srv, uint64_t id, struct tun_fwd_session_info *info)
{
    struct session *ss = find_session(srv, id);
    if (!ss)
        return TUN_EINVAL;
    memset(info, 0, sizeof(*info));
    info->id = ss->id;
    info->authenticated = ss->authed;
    const uint8_t *k = tun_qconn_peer_key(ss->qc);
    if (k) {
        memcpy(info->peer_key, k, 32);
        info->have_key = 1;
    }
    const struct sockaddr *ra = tun_qconn_remote(ss->qc);
    memcpy(&info->remote, ra, tun_sockaddr_len(ra));
    info->chans = ss->nchans;
    info->up = ss->up;
    info->down = ss->down;
    tun_qconn_get_stats(ss->qc, &info->quic);
    return 0;
}

size_t tun_fwd_server_sessions(struct tun_fwd_server *srv, uint64_t *ids, size_t max)
{
    size_t n = 0;
    for (struct session *ss = srv->sessions; ss; ss = ss->next) {
        if (n < max)
            ids[n] = ss->id;
        n++;
    }
    return n;
}
