#include "relay/queue.h"
#include "util/error.h"

#include <string.h>

int tun_relay_queue_init(struct tun_relay_queue *q, uint8_t *buf, size_t cap, size_t max_count,
                         enum tun_relay_drop policy)
{
    if (!q || !buf || cap < TUN_RELAY_QUEUE_OVERHEAD + 1 || cap > UINT32_MAX || max_count == 0 ||
        (policy != TUN_RELAY_DROP_NEWEST && policy != TUN_RELAY_DROP_OLDEST))
        return TUN_EINVAL;
    memset(q, 0, sizeof(*q));
    q->buf = buf;
    q->cap = cap;
    q->max_count = max_count;
    q->policy = policy;
    return 0;
}

void tun_relay_queue_clear(struct tun_relay_queue *q)
{
    q->r = q->w = q->end = 0;
    q->wrapped = 0;
    q->count = q->bytes = 0;
}

static uint32_t entry_len(const struct tun_relay_queue *q)
{
    uint32_t n;
    memcpy(&n, q->buf + q->r, sizeof n);
    return n;
}

/* Where an entry of `need` bytes can go, or -1 when it does not fit now. */
static long slot(const struct tun_relay_queue *q, size_t need)
{
    if (q->count >= q->max_count)
        return -1;
    if (q->count == 0)
        return need <= q->cap ? 0 : -1;
    if (q->wrapped)
        return q->r - q->w >= need ? (long)q->w : -1;
    if (q->cap - q->w >= need)
        return (long)q->w;
    /* Wrap to the front; the gap at the end stays unused until the reader passes it. */
    return q->r >= need ? 0 : -1;
}

int tun_relay_queue_push(struct tun_relay_queue *q, const uint8_t *data, size_t len, uint64_t stamp)
{
    if (!q || !data || len == 0)
        return TUN_EINVAL;
    size_t need = TUN_RELAY_QUEUE_OVERHEAD + len;
    if (len > UINT32_MAX || need > q->cap) {
        q->dropped++;
        return TUN_ETOOBIG;
    }
    long at;
    while ((at = slot(q, need)) < 0) {
        if (q->policy == TUN_RELAY_DROP_NEWEST) {
            q->dropped++;
            return TUN_EAGAIN;
        }
        tun_relay_queue_pop(q); /* terminates: an empty queue always has room */
        q->dropped++;
    }
    if (at == 0 && q->count > 0 && !q->wrapped) {
        q->end = q->w;
        q->wrapped = 1;
    }
    uint32_t n = (uint32_t)len;
    memcpy(q->buf + at, &n, sizeof n);
    memcpy(q->buf + at + 4, &stamp, sizeof stamp);
    memcpy(q->buf + at + TUN_RELAY_QUEUE_OVERHEAD, data, len);
    q->w = (size_t)at + need;
    q->count++;
    q->bytes += len;
    return 0;
}

int tun_relay_queue_peek(const struct tun_relay_queue *q, const uint8_t **data, size_t *len,
                         uint64_t *stamp)
{
    if (!q || q->count == 0)
        return TUN_EAGAIN;
    *len = entry_len(q);
    *data = q->buf + q->r + TUN_RELAY_QUEUE_OVERHEAD;
    if (stamp)
        memcpy(stamp, q->buf + q->r + 4, sizeof *stamp);
    return 0;
}

void tun_relay_queue_pop(struct tun_relay_queue *q)
{
    if (!q || q->count == 0)
        return;
    uint32_t n = entry_len(q);
    q->r += TUN_RELAY_QUEUE_OVERHEAD + n;
    q->bytes -= n;
    q->count--;
    if (q->count == 0) {
        /* Start over at the front: keeps the free space in one piece. */
        tun_relay_queue_clear(q);
        return;
    }
    if (q->wrapped && q->r == q->end) {
        q->r = 0;
        q->wrapped = 0;
        q->end = 0;
    }
}
