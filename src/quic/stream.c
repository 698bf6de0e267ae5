/*
 * Streams: send buffers kept until acknowledged (ngtcp2 does not copy stream data), flow
 * control credit, and the deferred operations (FIN, reset) applied at the next flush.
 */
#include "quic/internal.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

/* Chunks come from a per-endpoint free list: a busy stream recycles the same few chunks
 * instead of calling malloc for every 16 KiB it sends. */
#define MAX_FREE_CHUNKS 64

static struct sbuf_chunk *chunk_get(struct tun_qep *ep)
{
    struct sbuf_chunk *ch = ep->free_chunks;
    if (ch) {
        ep->free_chunks = ch->next;
        ep->nfree_chunks--;
    } else {
        ch = malloc(sizeof(*ch));
        if (!ch)
            return NULL;
    }
    ch->next = NULL;
    ch->len = 0;
    return ch;
}

static void chunk_put(struct tun_qep *ep, struct sbuf_chunk *ch)
{
    if (ep->nfree_chunks >= MAX_FREE_CHUNKS) {
        free(ch);
        return;
    }
    ch->next = ep->free_chunks;
    ep->free_chunks = ch;
    ep->nfree_chunks++;
}

struct tun_qstream *tun__qstream_new(struct tun_qconn *c, int64_t id)
{
    struct tun_qstream *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->conn = c;
    s->id = id;
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    c->nstreams++;
    return s;
}

void tun__qstream_want_ops(struct tun_qstream *s)
{
    struct tun_qconn *c = s->conn;
    if (!s->in_ops) {
        s->in_ops = 1;
        s->ops_next = c->ops;
        c->ops = s;
    }
    tun__qep_mark_dirty(c->ep, c);
}

struct tun_qstream *tun__qstream_ops_pop(struct tun_qconn *c)
{
    struct tun_qstream *s = c->ops;
    if (s) {
        c->ops = s->ops_next;
        s->ops_next = NULL;
        s->in_ops = 0;
    }
    return s;
}

void tun__qstream_free(struct tun_qstream *s)
{
    struct tun_qconn *c = s->conn;
    if (s->in_sendq)
        tun__sendq_remove(c, s);
    if (s->in_ops) { /* the queue lives until the next flush: short, rarely walked */
        struct tun_qstream **pp = &c->ops;
        while (*pp != s)
            pp = &(*pp)->ops_next;
        *pp = s->ops_next;
    }
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    c->nstreams--;
    while (s->head) {
        struct sbuf_chunk *ch = s->head;
        s->head = ch->next;
        chunk_put(c->ep, ch);
    }
    free(s);
}

void tun__sendq_add(struct tun_qconn *c, struct tun_qstream *s)
{
    if (s->in_sendq)
        return;
    s->in_sendq = 1;
    c->nsendq++;
    s->send_next = NULL;
    s->send_prev = c->sendq_tail;
    if (c->sendq_tail)
        c->sendq_tail->send_next = s;
    else
        c->sendq_head = s;
    c->sendq_tail = s;
}

void tun__sendq_remove(struct tun_qconn *c, struct tun_qstream *s)
{
    if (!s->in_sendq)
        return;
    if (s->send_prev)
        s->send_prev->send_next = s->send_next;
    else
        c->sendq_head = s->send_next;
    if (s->send_next)
        s->send_next->send_prev = s->send_prev;
    else
        c->sendq_tail = s->send_prev;
    s->in_sendq = 0;
    c->nsendq--;
    s->send_next = s->send_prev = NULL;
}

static int has_pending(struct tun_qstream *s)
{
    return s->sent < s->written || (s->fin_requested && !s->fin_sent);
}

void tun_qstream_set_cbs(struct tun_qstream *s, const struct tun_qstream_cbs *cbs, void *ud)
{
    if (cbs)
        s->cbs = *cbs;
    else
        memset(&s->cbs, 0, sizeof(s->cbs));
    s->ud = ud;
}

int64_t tun_qstream_id(struct tun_qstream *s)
{
    return s->id;
}

struct tun_qconn *tun_qstream_conn(struct tun_qstream *s)
{
    return s->conn;
}

size_t tun_qstream_buffered(struct tun_qstream *s)
{
    return (size_t)(s->written - s->acked);
}

static int can_write(struct tun_qstream *s)
{
    return !(s->fin_requested || s->reset_requested || s->shut_wr || s->conn->closed);
}

/* Append an empty chunk at the tail. */
static int add_chunk(struct tun_qstream *s)
{
    struct sbuf_chunk *ch = chunk_get(s->conn->ep);
    if (!ch)
        return TUN_ENOMEM;
    if (s->tail)
        s->tail->next = ch;
    else {
        s->head = ch;
        s->base = s->written;
    }
    s->tail = ch;
    return 0;
}

/*
 * A stream also reports full once its share of TUN_QSTREAM_UNSENT_MAX waits unsent, however
 * large the send window: like TCP_NOTSENT_LOWAT, the backlog stays in the kernel's socket buffer
 * and the source feels the backpressure. The megabyte is shared by the streams waiting to send
 * (each keeps at least TUN_QSTREAM_UNSENT_MIN), so many busy streams hold no more than one. Without
 * it a fast source filled the whole window (16 MiB by default) ahead of the pacer: on a 200 Mbit/s
 * link the sender's peak RSS grew by 16.4 MB per busy stream, now by 1.2 MB. What we read is also
 * sent before it leaves the CPU's caches (ngtcp2 copies it into packets: 12 % of the sender's CPU):
 * on the benchmark's two-CPU veth 7 % less sender CPU and 9-10 % more throughput where the sender's
 * CPU is not shared with the receiver (unpinned, no difference measured). A megabyte is a
 * millisecond of sending at 8 Gbit/s, far longer than the loop takes to read more, so the pacer
 * never waits for data.
 */
static size_t unsent(const struct tun_qstream *s)
{
    return (size_t)(s->written - s->sent);
}

static size_t unsent_limit(const struct tun_qconn *c)
{
    size_t share = TUN_QSTREAM_UNSENT_MAX / (c->nsendq ? c->nsendq : 1);
    return share < TUN_QSTREAM_UNSENT_MIN ? TUN_QSTREAM_UNSENT_MIN : share;
}

/* After bytes were added: queue the stream for sending and report a full buffer. */
static int written(struct tun_qstream *s)
{
    struct tun_qconn *c = s->conn;
    if (!s->blocked)
        tun__sendq_add(c, s);
    tun__qep_mark_dirty(c->ep, c);
    if (tun_qstream_buffered(s) >= c->ep->cfg.stream_send_buffer || unsent(s) >= unsent_limit(c)) {
        s->full = 1;
        return 1;
    }
    return 0;
}

/* After bytes were sent or acknowledged: a full stream takes more once both limits have half
 * their room again (the halves keep the reader from stopping and starting for every packet). */
static void maybe_writable(struct tun_qstream *s)
{
    if (s->full && tun_qstream_buffered(s) <= s->conn->ep->cfg.stream_send_buffer / 2 &&
        unsent(s) <= unsent_limit(s->conn) / 2) {
        s->full = 0;
        if (s->cbs.on_writable)
            s->cbs.on_writable(s, s->ud);
    }
}

int tun_qstream_write(struct tun_qstream *s, const uint8_t *data, size_t len)
{
    if (!can_write(s))
        return TUN_ECLOSED;
    while (len > 0) {
        if ((!s->tail || s->tail->len == SBUF_CHUNK) && add_chunk(s) != 0)
            return TUN_ENOMEM;
        size_t n = SBUF_CHUNK - s->tail->len;
        if (n > len)
            n = len;
        memcpy(s->tail->data + s->tail->len, data, n);
        s->tail->len += n;
        s->written += n;
        data += n;
        len -= n;
    }
    return written(s);
}

int tun_qstream_reserve(struct tun_qstream *s, size_t min, uint8_t **buf, size_t *len)
{
    if (!can_write(s))
        return TUN_ECLOSED;
    if (min > SBUF_CHUNK)
        min = SBUF_CHUNK;
    /* A last chunk with less room is left short: chunks need not be full (the send path and
     * the release on acknowledgement go by each chunk's length). */
    if ((!s->tail || SBUF_CHUNK - s->tail->len < min) && add_chunk(s) != 0)
        return TUN_ENOMEM;
    *buf = s->tail->data + s->tail->len;
    *len = SBUF_CHUNK - s->tail->len;
    return 0;
}

int tun_qstream_commit(struct tun_qstream *s, size_t n)
{
    if (n == 0) {
        /* Nothing came (EAGAIN, EOF): do not keep an empty chunk on an idle stream. */
        if (s->tail && s->tail->len == 0) {
            struct sbuf_chunk **pp = &s->head, *prev = NULL;
            while (*pp != s->tail) {
                prev = *pp;
                pp = &(*pp)->next;
            }
            *pp = NULL;
            if (s->vc == s->tail)
                s->vc = NULL;
            chunk_put(s->conn->ep, s->tail);
            s->tail = prev;
        }
        return 0;
    }
    s->tail->len += n;
    s->written += n;
    return written(s);
}

int tun_qstream_finish(struct tun_qstream *s)
{
    if (s->reset_requested || s->shut_wr || s->conn->closed)
        return TUN_ECLOSED;
    if (s->fin_requested)
        return 0;
    s->fin_requested = 1;
    if (!s->blocked || s->sent == s->written)
        tun__sendq_add(s->conn, s);
    tun__qep_mark_dirty(s->conn->ep, s->conn);
    return 0;
}

void tun_qstream_reset(struct tun_qstream *s, uint64_t code)
{
    if (s->reset_requested || s->closed)
        return;
    s->reset_requested = 1;
    s->reset_code = code;
    tun__sendq_remove(s->conn, s);
    tun__qstream_want_ops(s);
}

void tun_qstream_consume(struct tun_qstream *s, size_t n)
{
    s->consume_pending += n;
    tun__qstream_want_ops(s);
}

void tun__qstream_acked(struct tun_qstream *s, uint64_t upto)
{
    if (upto <= s->acked)
        return;
    s->acked = upto;
    struct tun_qep *ep = s->conn->ep;
    /* Release every chunk that now lies wholly below the acknowledged offset. The tail chunk
     * stays while it may still receive writes. */
    while (s->head && s->base + s->head->len <= s->acked &&
           (s->head != s->tail || s->head->len == SBUF_CHUNK || s->acked == s->written)) {
        struct sbuf_chunk *ch = s->head;
        s->base += ch->len;
        s->head = ch->next;
        if (!s->head)
            s->tail = NULL;
        chunk_put(ep, ch);
    }
    maybe_writable(s);
}

size_t tun__qstream_pending_vec(struct tun_qstream *s, ngtcp2_vec *vec, size_t max, size_t enough,
                                int *fin)
{
    /* Start from the chunk remembered last time instead of walking from the head (a busy
     * stream holds hundreds of chunks until they are acknowledged). A remembered chunk that
     * was freed since lies below `base`, which the check catches. */
    struct sbuf_chunk *ch = s->head;
    uint64_t off = s->base;
    if (s->vc && s->vc_off >= s->base && s->vc_off <= s->sent) {
        ch = s->vc;
        off = s->vc_off;
    }
    while (ch && off + ch->len <= s->sent && ch->next) {
        off += ch->len;
        ch = ch->next;
    }
    s->vc = ch;
    s->vc_off = off;
    size_t n = 0, total = 0;
    for (; ch && n < max && total < enough; ch = ch->next) {
        uint64_t end = off + ch->len;
        if (end > s->sent) {
            size_t skip = s->sent > off ? (size_t)(s->sent - off) : 0;
            vec[n].base = ch->data + skip;
            vec[n].len = ch->len - skip;
            total += vec[n].len;
            n++;
        }
        off = end;
    }
    /* FIN may ride only on a packet that carries everything that is left. */
    *fin = s->fin_requested && !s->fin_sent && off == s->written;
    return n;
}

void tun__qstream_sent(struct tun_qstream *s, size_t n, int fin)
{
    struct tun_qconn *c = s->conn;
    s->sent += n;
    if (fin && s->sent == s->written)
        s->fin_sent = 1;
    if (!has_pending(s)) {
        tun__sendq_remove(c, s);
    } else if (n && s->send_next) {
        /* Round robin, a packet at a time: a stream that sent and has more goes behind the
         * others. First come, first served let a bulk transfer that never ran dry (any link
         * slower than its source) hold every packet, and the other forwarded connections of
         * the client waited for it to end: an interactive one's round trip timed out. */
        tun__sendq_remove(c, s);
        tun__sendq_add(c, s);
    }
    maybe_writable(s);
}
