/* sendmmsg */
#define _GNU_SOURCE
#include "fwd/flow.h"
#include "net/busypoll.h"
#include "proto/msg.h"
#include "util/error.h"
#include "util/log.h"
#include "util/sockaddr.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <string.h>

#define PENDING_MAX 64 /* datagrams a client flow holds while waiting for OPEN_OK */

struct pending {
    struct pending *next;
    size_t len;
    uint8_t data[];
};

/* Datagrams for a server flow's target, collected while a receive batch is processed and sent
 * with one sendmmsg on the connected socket after it (instead of one syscall each). */
#define OUT_MAX 64
struct outq {
    size_t n, used;
    struct iovec iov[OUT_MAX];
    uint8_t buf[OUT_MAX * 1500];
};

struct tun_flow {
    struct tun_qstream *s;
    struct tun_qconn *qc;
    uint32_t id;
    int has_id, is_server, closing, stream_gone;
    uv_udp_t *udp; /* server: socket to the target */
    uv_timer_t *idle;
    uint64_t idle_ms;
    struct sockaddr_storage sender;
    struct tun_msg_reader rd;
    struct pending *pq_head, *pq_tail;
    size_t npending;
    uint64_t up, down;
    struct outq *out; /* server: pending sends to the target */
    struct tun_flow *out_next;
    int in_out;
    tun_flow_done_cb done;
    tun_flow_deliver_cb deliver;
    tun_flow_result_cb result;
    void *ud;
    int handles; /* open uv handles */
};

static uint8_t dgram_buf[8 + 65536];

static void out_drop(struct tun_flow *f);

static void maybe_done(struct tun_flow *f)
{
    if (!f->closing || f->handles || !f->stream_gone)
        return;
    out_drop(f);
    while (f->pq_head) {
        struct pending *p = f->pq_head;
        f->pq_head = p->next;
        free(p);
    }
    tun_msg_reader_free(&f->rd);
    if (f->done)
        f->done(f, f->up, f->down, f->ud);
    free(f);
}

static void handle_closed(uv_handle_t *h)
{
    struct tun_flow *f = h->data;
    free(h);
    f->handles--;
    maybe_done(f);
}

void tun_flow_close(struct tun_flow *f)
{
    if (f->closing)
        return;
    f->closing = 1;
    out_drop(f);
    if (f->udp) {
        uv_close((uv_handle_t *)f->udp, handle_closed);
        f->udp = NULL;
    }
    if (f->idle) {
        uv_close((uv_handle_t *)f->idle, handle_closed);
        f->idle = NULL;
    }
    if (!f->stream_gone)
        tun_qstream_finish(f->s);
    maybe_done(f);
}

static void idle_cb(uv_timer_t *t)
{
    struct tun_flow *f = t->data;
    tun_log_debug(FWD, "flow %u: idle for %llu ms, closing", f->id, (unsigned long long)f->idle_ms);
    tun_flow_close(f);
}

static void touch(struct tun_flow *f)
{
    if (f->idle)
        uv_timer_start(f->idle, idle_cb, f->idle_ms, 0);
}

static void send_on_stream(struct tun_flow *f, const uint8_t *data, size_t len)
{
    uint8_t hdr[TUN_MSG_HEADER];
    hdr[0] = TUN_MSG_UDP_DATA;
    hdr[1] = (uint8_t)(len >> 8);
    hdr[2] = (uint8_t)len;
    tun_qstream_write(f->s, hdr, sizeof(hdr));
    tun_qstream_write(f->s, data, len);
}

static void send_now(struct tun_flow *f, const uint8_t *data, size_t len)
{
    size_t n = tun_varint_encode(f->id, dgram_buf);
    memcpy(dgram_buf + n, data, len);
    int rc = tun_qconn_send_datagram(f->qc, dgram_buf, n + len);
    if (rc == TUN_ETOOBIG)
        send_on_stream(f, data, len); /* too big for this path: the stream never loses it */
}

void tun_flow_to_peer(struct tun_flow *f, const uint8_t *data, size_t len)
{
    if (f->closing || f->stream_gone || len > 65535)
        return;
    f->up += len;
    touch(f);
    if (!f->has_id) {
        if (f->npending >= PENDING_MAX)
            return;
        struct pending *p = malloc(sizeof(*p) + len);
        if (!p)
            return;
        p->next = NULL;
        p->len = len;
        memcpy(p->data, data, len);
        if (f->pq_tail)
            f->pq_tail->next = p;
        else
            f->pq_head = p;
        f->pq_tail = p;
        f->npending++;
        return;
    }
    send_now(f, data, len);
}

static struct tun_flow *out_list;
static uv_check_t out_check;
static int out_check_ready;

static void out_flush(struct tun_flow *f)
{
    struct outq *q = f->out;
    if (!q || q->n == 0 || !f->udp)
        return;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)f->udp, &fd) == 0) {
        struct mmsghdr msgs[OUT_MAX];
        memset(msgs, 0, sizeof(msgs));
        for (size_t i = 0; i < q->n; i++) {
            msgs[i].msg_hdr.msg_iov = &q->iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        /* A full socket buffer drops the rest, as a router would: UDP gives no promise. */
        (void)sendmmsg(fd, msgs, (unsigned)q->n, MSG_DONTWAIT);
    }
    q->n = q->used = 0;
}

static void out_check_cb(uv_check_t *h)
{
    struct tun_flow *list = out_list;
    out_list = NULL;
    uv_check_stop(h);
    while (list) {
        struct tun_flow *f = list;
        list = f->out_next;
        f->in_out = 0;
        f->out_next = NULL;
        out_flush(f);
    }
}

static void out_drop(struct tun_flow *f)
{
    if (f->in_out) {
        struct tun_flow **pp = &out_list;
        while (*pp && *pp != f)
            pp = &(*pp)->out_next;
        if (*pp)
            *pp = f->out_next;
        f->in_out = 0;
    }
    free(f->out);
    f->out = NULL;
}

/* Queue one datagram for the target; sent after the receive batch. */
static void out_add(struct tun_flow *f, const uint8_t *data, size_t len)
{
    if (len > 1500 || !f->udp) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        uv_udp_try_send(f->udp, &b, 1, NULL);
        return;
    }
    if (!f->out && !(f->out = calloc(1, sizeof(*f->out))))
        return;
    struct outq *q = f->out;
    if (q->n == OUT_MAX || q->used + len > sizeof(q->buf))
        out_flush(f);
    memcpy(q->buf + q->used, data, len);
    q->iov[q->n].iov_base = q->buf + q->used;
    q->iov[q->n].iov_len = len;
    q->used += len;
    q->n++;
    if (!f->in_out) {
        f->in_out = 1;
        f->out_next = out_list;
        out_list = f;
        if (!out_check_ready) {
            /* Lives as long as the process, unreferenced (see splice.c's twin). */
            uv_check_init(f->udp->loop, &out_check);
            uv_unref((uv_handle_t *)&out_check);
            out_check_ready = 1;
        }
        uv_check_start(&out_check, out_check_cb);
    }
}

void tun_flow_from_peer(struct tun_flow *f, const uint8_t *data, size_t len)
{
    if (f->closing)
        return;
    f->down += len;
    touch(f);
    if (f->is_server) {
        out_add(f, data, len);
    } else if (f->deliver) {
        f->deliver(f, (struct sockaddr *)&f->sender, data, len, f->ud);
    }
}

void tun_flow_stream_bytes(struct tun_flow *f, const uint8_t *data, size_t len)
{
    while (len > 0 && !f->closing) {
        struct tun_msg m;
        int rc = tun_msg_read(&f->rd, &data, &len, &m);
        if (rc == 0)
            return;
        if (rc > 0 && !f->has_id && !f->is_server) {
            /* The first message answers our OPEN. */
            if (m.type == TUN_MSG_OPEN_OK && m.len == 4) {
                tun_flow_set_id(f, (uint32_t)m.body[0] << 24 | (uint32_t)m.body[1] << 16 |
                                       (uint32_t)m.body[2] << 8 | m.body[3]);
                if (f->result)
                    f->result(f, 1, 0, NULL, f->ud);
                continue;
            }
            if (m.type == TUN_MSG_OPEN_FAIL && m.len >= 1) {
                char reason[TUN_MSG_MAX_CONTROL];
                memcpy(reason, m.body + 1, m.len - 1u);
                reason[m.len - 1u] = '\0';
                if (f->result)
                    f->result(f, 0, m.body[0], reason, f->ud);
                tun_flow_close(f);
                return;
            }
            rc = TUN_EPROTO;
        }
        if (rc < 0 || m.type != TUN_MSG_UDP_DATA) {
            tun_log_warn(FWD, "flow %u: protocol error on its stream", f->id);
            tun_qstream_reset(f->s, TUN_RESET_PROTOCOL);
            tun_flow_close(f);
            return;
        }
        tun_flow_from_peer(f, m.body, m.len);
    }
}

static void on_data(struct tun_qstream *s, const uint8_t *data, size_t len, void *ud)
{
    tun_qstream_consume(s, len);
    tun_flow_stream_bytes(ud, data, len);
}

static void on_fin(struct tun_qstream *s, void *ud)
{
    (void)s;
    tun_flow_close(ud);
}

static void on_reset(struct tun_qstream *s, uint64_t code, void *ud)
{
    (void)code;
    tun_qstream_reset(s, TUN_RESET_CLOSED);
    tun_flow_close(ud);
}

static void on_close(struct tun_qstream *s, void *ud)
{
    (void)s;
    struct tun_flow *f = ud;
    f->stream_gone = 1;
    tun_flow_close(f);
    maybe_done(f);
}

/* One receive area for every UDP socket of this layer: callbacks consume each datagram before
 * returning, and libuv's recvmmsg mode cuts the area into 64 KiB slots (20 per call). */
static char udp_rbuf[20 * 65536];

void tun_flow_udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)h;
    (void)hint;
    buf->base = udp_rbuf;
    buf->len = sizeof(udp_rbuf);
}

void tun_flow_udp_buffers(uv_udp_t *u)
{
    /* Bursts at hundreds of Mbit/s outrun the default socket buffers (about 200 KiB). */
    int size = 4 << 20;
    uv_recv_buffer_size((uv_handle_t *)u, &size);
    size = 4 << 20;
    uv_send_buffer_size((uv_handle_t *)u, &size);
}

static void target_recv_cb(uv_udp_t *u, ssize_t n, const uv_buf_t *buf, const struct sockaddr *addr,
                           unsigned flags)
{
    (void)addr;
    struct tun_flow *f = u->data;
    if (n > 0 && !(flags & UV_UDP_MMSG_FREE)) {
        tun_busypoll_kick(u->loop, (size_t)n);
        tun_flow_to_peer(f, (const uint8_t *)buf->base, (size_t)n);
    }
}

static struct tun_flow *flow_alloc(uv_loop_t *loop, struct tun_qstream *s, uint64_t idle_ms,
                                   tun_flow_done_cb done, void *ud)
{
    struct tun_flow *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->s = s;
    f->qc = tun_qstream_conn(s);
    f->idle_ms = idle_ms;
    f->done = done;
    f->ud = ud;
    tun_msg_reader_init(&f->rd, TUN_MSG_MAX_BODY);
    f->idle = malloc(sizeof(*f->idle));
    if (f->idle) {
        uv_timer_init(loop, f->idle);
        f->idle->data = f;
        f->handles++;
        touch(f);
    }
    struct tun_qstream_cbs cbs = {
        .on_data = on_data, .on_fin = on_fin, .on_reset = on_reset, .on_close = on_close};
    tun_qstream_set_cbs(s, &cbs, f);
    return f;
}

int tun_flow_server_new(uv_loop_t *loop, struct tun_qstream *s, uint32_t id,
                        const struct sockaddr *target, uint64_t idle_ms, tun_flow_done_cb done,
                        void *ud, struct tun_flow **out)
{
    struct tun_flow *f = flow_alloc(loop, s, idle_ms, done, ud);
    if (!f)
        return TUN_ENOMEM;
    f->is_server = 1;
    f->id = id;
    f->has_id = 1;
    f->udp = malloc(sizeof(*f->udp));
    int rc =
        f->udp ? uv_udp_init_ex(loop, f->udp, target->sa_family | UV_UDP_RECVMMSG) : TUN_ENOMEM;
    if (rc == 0) {
        f->udp->data = f;
        f->handles++;
        rc = uv_udp_connect(f->udp, target);
        if (rc == 0) {
            tun_flow_udp_buffers(f->udp);
            rc = uv_udp_recv_start(f->udp, tun_flow_udp_alloc, target_recv_cb);
        }
    } else {
        free(f->udp);
        f->udp = NULL;
    }
    *out = f;
    if (rc != 0) {
        /* The caller still gets the flow: closing it finishes the stream cleanly. */
        tun_flow_close(f);
        return rc;
    }
    return 0;
}

int tun_flow_client_new(uv_loop_t *loop, struct tun_qstream *s, const struct sockaddr *sender,
                        uint64_t idle_ms, tun_flow_deliver_cb deliver, tun_flow_done_cb done,
                        void *ud, struct tun_flow **out)
{
    struct tun_flow *f = flow_alloc(loop, s, idle_ms, done, ud);
    if (!f)
        return TUN_ENOMEM;
    memcpy(&f->sender, sender, tun_sockaddr_len(sender));
    f->deliver = deliver;
    *out = f;
    return 0;
}

void tun_flow_set_id(struct tun_flow *f, uint32_t id)
{
    f->id = id;
    f->has_id = 1;
    while (f->pq_head) {
        struct pending *p = f->pq_head;
        f->pq_head = p->next;
        send_now(f, p->data, p->len);
        free(p);
    }
    f->pq_tail = NULL;
    f->npending = 0;
}

void tun_flow_set_result_cb(struct tun_flow *f, tun_flow_result_cb cb)
{
    f->result = cb;
}

uint32_t tun_flow_id(struct tun_flow *f)
{
    return f->id;
}

const struct sockaddr *tun_flow_sender(struct tun_flow *f)
{
    return (const struct sockaddr *)&f->sender;
}

/* ---- id map: open addressing with backward-shift deletion ---------------------------------- */

static size_t slot_of(struct tun_flow_map *m, uint64_t id)
{
    return (size_t)(id * 0x9E3779B97F4A7C15ull >> 32) & (m->cap - 1);
}

int tun_flow_map_put(struct tun_flow_map *m, struct tun_flow *f)
{
    if ((m->n + 1) * 2 > m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 16;
        struct tun_flow **old = m->slots;
        size_t oldcap = m->cap;
        m->slots = calloc(ncap, sizeof(*m->slots));
        if (!m->slots) {
            m->slots = old;
            return TUN_ENOMEM;
        }
        m->cap = ncap;
        m->n = 0;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i])
                tun_flow_map_put(m, old[i]);
        free(old);
    }
    size_t i = slot_of(m, f->id);
    while (m->slots[i])
        i = (i + 1) & (m->cap - 1);
    m->slots[i] = f;
    m->n++;
    return 0;
}

struct tun_flow *tun_flow_map_get(struct tun_flow_map *m, uint64_t id)
{
    if (!m->cap)
        return NULL;
    for (size_t i = slot_of(m, id); m->slots[i]; i = (i + 1) & (m->cap - 1))
        if (m->slots[i]->id == id)
            return m->slots[i];
    return NULL;
}

void tun_flow_map_del(struct tun_flow_map *m, struct tun_flow *f)
{
    if (!m->cap)
        return;
    size_t i = slot_of(m, f->id);
    while (m->slots[i] && m->slots[i] != f)
        i = (i + 1) & (m->cap - 1);
    if (!m->slots[i])
        return;
    m->slots[i] = NULL;
    m->n--;
    /* Re-insert the rest of the cluster so lookups never stop at the hole. */
    for (size_t j = (i + 1) & (m->cap - 1); m->slots[j]; j = (j + 1) & (m->cap - 1)) {
        struct tun_flow *g = m->slots[j];
        m->slots[j] = NULL;
        m->n--;
        tun_flow_map_put(m, g);
    }
}

void tun_flow_map_free(struct tun_flow_map *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}
