#include "fwd/splice.h"
#include "net/busypoll.h"
#include "proto/msg.h"
#include "util/error.h"
#include "util/log.h"

#include <stdlib.h>
#include <string.h>

/* Bytes from QUIC on their way to the TCP socket: collected while a receive batch is processed,
 * written with one syscall after it, and kept for a uv_write if the socket did not take all. */
#define WBUF_CAP   (256 * 1024)
#define DIRECT_MAX 1024 /* pieces below this may skip the collection (see on_data) */
struct wbuf {
    uv_write_t req;
    struct tun_splice *sp;
    size_t len, off; /* bytes held; bytes already written by uv_try_write */
    uint8_t data[];
};

struct tun_splice {
    uv_tcp_t *tcp;
    struct tun_qstream *s;
    tun_splice_done_cb done;
    void *ud;
    uint64_t up, down;
    size_t queued;     /* bytes in uv_write requests not yet completed */
    struct wbuf *pend; /* collected this loop iteration, not yet written */
    struct tun_splice *pend_next;
    int in_pend;
    unsigned reading : 1, tcp_eof : 1, quic_fin : 1, tcp_shutdown : 1, stream_closed : 1,
        tcp_closing : 1, reset : 1, finished : 1;
    uv_shutdown_t shut;
};

/* TCP reads go straight into the stream's send buffer (tun_qstream_reserve), so an idle
 * connection holds no read buffer. This one takes the bytes when the stream cannot: they are
 * counted and dropped, as the stream is closing. */
static uint8_t read_buf[65536];

/* Less room than this at the end of the send buffer starts a fresh chunk: a read should not
 * be cut short to fill a few bytes. */
#define READ_MIN 4096

static void maybe_finish(struct tun_splice *sp);
static void pend_drop(struct tun_splice *sp);

static void tcp_closed_cb(uv_handle_t *h)
{
    struct tun_splice *sp = h->data;
    free(h);
    sp->tcp = NULL;
    maybe_finish(sp);
}

static void close_tcp(struct tun_splice *sp, int reset)
{
    if (sp->tcp_closing || !sp->tcp)
        return;
    sp->tcp_closing = 1;
    pend_drop(sp);
    if (reset && uv_tcp_close_reset(sp->tcp, tcp_closed_cb) == 0)
        return;
    uv_close((uv_handle_t *)sp->tcp, tcp_closed_cb);
}

static void maybe_finish(struct tun_splice *sp)
{
    if (sp->finished)
        return;
    /* Everything is over once the stream is gone and the TCP handle is closed. */
    if (sp->stream_closed && sp->tcp == NULL) {
        sp->finished = 1;
        if (sp->done)
            sp->done(sp, sp->up, sp->down, sp->reset, sp->ud);
        free(sp);
        return;
    }
    /* Both directions finished cleanly: close the TCP side. */
    if (sp->tcp && !sp->tcp_closing && sp->tcp_eof && sp->tcp_shutdown && sp->queued == 0)
        close_tcp(sp, 0);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct tun_splice *sp = h->data;
    uint8_t *p;
    size_t len;
    if (!sp->stream_closed && tun_qstream_reserve(sp->s, READ_MIN, &p, &len) == 0) {
        buf->base = (char *)p;
        buf->len = len;
        return;
    }
    buf->base = (char *)read_buf;
    buf->len = sizeof(read_buf);
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct tun_splice *sp = st->data;
    int in_place = buf->base && buf->base != (char *)read_buf;
    if (n <= 0 && in_place)
        tun_qstream_commit(sp->s, 0);
    if (n > 0) {
        tun_busypoll_kick(st->loop, (size_t)n);
        sp->up += (uint64_t)n;
        if (!in_place)
            return; /* the stream is closing */
        int full = tun_qstream_commit(sp->s, (size_t)n);
        if (full == 1 && sp->reading) {
            /* Backpressure: stop reading TCP until QUIC has sent (and the peer acked) half. */
            uv_read_stop(st);
            sp->reading = 0;
        }
        return;
    }
    if (n == 0)
        return;
    uv_read_stop(st);
    sp->reading = 0;
    if (n == UV_EOF) {
        sp->tcp_eof = 1;
        if (!sp->stream_closed)
            tun_qstream_finish(sp->s); /* half-close: the other direction stays open */
        maybe_finish(sp);
        return;
    }
    /* ECONNRESET and friends: carry the reset across. */
    tun_log_debug(FWD, "stream %lld: TCP read: %s", (long long)tun_qstream_id(sp->s),
                  uv_strerror((int)n));
    sp->reset = 1;
    sp->tcp_eof = 1;
    if (!sp->stream_closed)
        tun_qstream_reset(sp->s, TUN_RESET_TCP);
    close_tcp(sp, 0);
}

static void start_reading(struct tun_splice *sp)
{
    if (sp->reading || sp->tcp_eof || sp->tcp_closing || !sp->tcp)
        return;
    if (uv_read_start((uv_stream_t *)sp->tcp, alloc_cb, read_cb) == 0)
        sp->reading = 1;
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    struct tun_splice *sp = req->data;
    (void)status;
    sp->tcp_shutdown = 1;
    maybe_finish(sp);
}

static void send_tcp_fin(struct tun_splice *sp)
{
    if (!sp->quic_fin || sp->queued || sp->pend || sp->tcp_shutdown || sp->tcp_closing || !sp->tcp)
        return;
    sp->shut.data = sp;
    if (uv_shutdown(&sp->shut, (uv_stream_t *)sp->tcp, shutdown_cb) != 0) {
        sp->tcp_shutdown = 1;
        maybe_finish(sp);
    }
}

static void write_cb(uv_write_t *req, int status)
{
    struct wbuf *w = req->data;
    struct tun_splice *sp = w->sp;
    size_t n = w->len - w->off;
    sp->queued -= n;
    /* Flow control: the peer may send more only once the bytes reached the TCP socket. */
    if (!sp->stream_closed)
        tun_qstream_consume(sp->s, n);
    free(w);
    if (status < 0 && !sp->tcp_closing) {
        sp->reset = 1;
        if (!sp->stream_closed)
            tun_qstream_reset(sp->s, TUN_RESET_TCP);
        close_tcp(sp, 0);
        return;
    }
    send_tcp_fin(sp);
    maybe_finish(sp);
}

/* Write what the TCP socket takes now, without queueing; the bytes written are credited back
 * to the stream's flow control. Returns how many. */
static size_t write_now(struct tun_splice *sp, const uint8_t *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)sp->tcp, &b, 1);
    if (n <= 0)
        return 0;
    if (!sp->stream_closed)
        tun_qstream_consume(sp->s, (size_t)n);
    return (size_t)n;
}

/* Write what was collected: one try_write, and a uv_write for the rest. */
static void pend_flush(struct tun_splice *sp)
{
    struct wbuf *w = sp->pend;
    sp->pend = NULL;
    if (!w)
        return;
    if (!sp->tcp || sp->tcp_closing) {
        free(w);
        return;
    }
    if (sp->queued == 0)
        w->off = write_now(sp, w->data, w->len);
    if (w->off == w->len) {
        free(w);
        send_tcp_fin(sp);
        return;
    }
    w->req.data = w;
    uv_buf_t b = uv_buf_init((char *)w->data + w->off, (unsigned)(w->len - w->off));
    if (uv_write(&w->req, (uv_stream_t *)sp->tcp, &b, 1, write_cb) != 0) {
        free(w);
        tun_splice_abort(sp);
        return;
    }
    sp->queued += w->len - w->off;
}

/* Splices with collected bytes; one check handle writes them after the loop's poll phase (when
 * the whole receive batch has been processed). */
static struct tun_splice *pend_list;
static uv_check_t pend_check;
static int pend_check_ready;

static void pend_check_cb(uv_check_t *h)
{
    struct tun_splice *list = pend_list;
    pend_list = NULL;
    uv_check_stop(h);
    while (list) {
        struct tun_splice *sp = list;
        list = sp->pend_next;
        sp->in_pend = 0;
        sp->pend_next = NULL;
        pend_flush(sp);
    }
}

static void pend_drop(struct tun_splice *sp)
{
    if (sp->in_pend) {
        struct tun_splice **pp = &pend_list;
        while (*pp && *pp != sp)
            pp = &(*pp)->pend_next;
        if (*pp)
            *pp = sp->pend_next;
        sp->in_pend = 0;
    }
    free(sp->pend);
    sp->pend = NULL;
}

static void on_data(struct tun_qstream *s, const uint8_t *data, size_t len, void *ud)
{
    struct tun_splice *sp = ud;
    if (!sp->tcp || sp->tcp_closing) {
        tun_qstream_consume(s, len);
        return;
    }
    sp->down += len;
    /* A short piece with nothing ahead of it is written at once, from inside the receive, so
     * neither the rest of the packet's processing nor the loop's turn delays the answer of a
     * request/response exchange. Full packets (bulk transfers) are still collected and
     * written with one call per receive batch. */
    if (len < DIRECT_MAX && !sp->pend && !sp->queued) {
        size_t n = write_now(sp, data, len);
        data += n;
        len -= n;
        if (!len)
            return;
    }
    while (len > 0) {
        if (sp->pend && sp->pend->len == WBUF_CAP)
            pend_flush(sp);
        if (!sp->pend) {
            sp->pend = malloc(sizeof(struct wbuf) + WBUF_CAP);
            if (!sp->pend) {
                tun_splice_abort(sp);
                return;
            }
            sp->pend->sp = sp;
            sp->pend->len = sp->pend->off = 0;
        }
        size_t n = WBUF_CAP - sp->pend->len;
        if (n > len)
            n = len;
        memcpy(sp->pend->data + sp->pend->len, data, n);
        sp->pend->len += n;
        data += n;
        len -= n;
    }
    if (!sp->in_pend) {
        sp->in_pend = 1;
        sp->pend_next = pend_list;
        pend_list = sp;
        if (!pend_check_ready) {
            /* The check handle lives as long as the process; it is unreferenced so it never
             * keeps the loop alive, and closed with the loop's other handles at exit. */
            uv_check_init(sp->tcp->loop, &pend_check);
            uv_unref((uv_handle_t *)&pend_check);
            pend_check_ready = 1;
        }
        uv_check_start(&pend_check, pend_check_cb);
    }
}

static void on_fin(struct tun_qstream *s, void *ud)
{
    (void)s;
    struct tun_splice *sp = ud;
    sp->quic_fin = 1;
    send_tcp_fin(sp);
}

static void on_reset(struct tun_qstream *s, uint64_t code, void *ud)
{
    (void)s;
    struct tun_splice *sp = ud;
    tun_log_debug(FWD, "stream %lld: reset by peer (code %llu)", (long long)tun_qstream_id(s),
                  (unsigned long long)code);
    sp->reset = 1;
    sp->tcp_eof = 1;
    tun_qstream_reset(s, TUN_RESET_CLOSED);
    close_tcp(sp, code == TUN_RESET_TCP);
}

static void on_writable(struct tun_qstream *s, void *ud)
{
    (void)s;
    start_reading(ud);
}

static void on_close(struct tun_qstream *s, void *ud)
{
    (void)s;
    struct tun_splice *sp = ud;
    sp->stream_closed = 1;
    sp->s = NULL;
    /* A stream that ends before both directions finished means the connection was lost or
     * aborted: reset the TCP side so the application notices. After a clean finish the TCP
     * side closes by itself once its queued bytes and FIN are out. */
    if (sp->tcp && !sp->tcp_closing && !(sp->tcp_eof && sp->quic_fin)) {
        sp->reset = 1;
        close_tcp(sp, 1);
    }
    maybe_finish(sp);
}

int tun_splice_start(uv_tcp_t *tcp, struct tun_qstream *s, const uint8_t *pending, size_t npending,
                     tun_splice_done_cb done, void *ud, struct tun_splice **out)
{
    struct tun_splice *sp = calloc(1, sizeof(*sp));
    if (!sp)
        return TUN_ENOMEM;
    sp->tcp = tcp;
    sp->s = s;
    sp->done = done;
    sp->ud = ud;
    tcp->data = sp;
    uv_tcp_nodelay(tcp, 1);
    struct tun_qstream_cbs cbs = {
        .on_data = on_data,
        .on_fin = on_fin,
        .on_reset = on_reset,
        .on_writable = on_writable,
        .on_close = on_close,
    };
    tun_qstream_set_cbs(s, &cbs, sp);
    if (npending)
        on_data(s, pending, npending, sp);
    start_reading(sp);
    if (out)
        *out = sp;
    return 0;
}

void tun_splice_abort(struct tun_splice *sp)
{
    sp->reset = 1;
    sp->tcp_eof = 1;
    if (!sp->stream_closed && sp->s)
        tun_qstream_reset(sp->s, TUN_RESET_CLOSED);
    close_tcp(sp, 1);
}
