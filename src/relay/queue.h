/*
 * A bounded FIFO of datagrams (or encoded frames) in a caller-supplied byte buffer: the
 * per-client send queue of a relay, or a client's "queued while connecting" buffer.
 * Allocation-free and sans-IO.
 *
 * Each entry takes TUN_RELAY_QUEUE_OVERHEAD + len bytes of the buffer and is stored
 * contiguously, so peek() hands out one pointer. Two bounds hold at all times: at most
 * `max_count` entries, and the buffer's capacity in bytes. When a push does not fit:
 *
 *   TUN_RELAY_DROP_NEWEST  the new datagram is refused (tail drop, like a router queue): what
 *                          is queued is nearest to being sent, and a congestion controller
 *                          reacts to a lost packet the same whichever one it is;
 *   TUN_RELAY_DROP_OLDEST  the oldest entries are evicted until it fits: for traffic where a
 *                          fresh packet is worth more than a stale one.
 *
 * Every refused or evicted datagram is counted in `dropped`. Each entry carries a caller
 * stamp (e.g. the enqueue time in microseconds) so stale entries can be dropped on peek.
 */
#ifndef TUN_RELAY_QUEUE_H
#define TUN_RELAY_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#define TUN_RELAY_QUEUE_OVERHEAD 12 /* per entry: length u32 + stamp u64 */

enum tun_relay_drop {
    TUN_RELAY_DROP_NEWEST = 0,
    TUN_RELAY_DROP_OLDEST = 1,
};

struct tun_relay_queue {
    uint8_t *buf;
    size_t cap;
    size_t r, w; /* read and write offsets */
    size_t end;  /* while wrapped: where the entries before the wrap stop */
    int wrapped; /* entries occupy [r, end) then [0, w) */
    size_t count, max_count;
    size_t bytes; /* payload bytes queued (without overhead) */
    int policy;
    uint64_t dropped;
};

/* Returns 0 or TUN_EINVAL (no buffer, cap < overhead + 1, max_count 0, unknown policy). */
int tun_relay_queue_init(struct tun_relay_queue *q, uint8_t *buf, size_t cap, size_t max_count,
                         enum tun_relay_drop policy);

/*
 * Append a copy of data[len] (len >= 1). Returns 0 (queued; with DROP_OLDEST older entries
 * may have been evicted), TUN_EAGAIN (DROP_NEWEST and no room: not queued) or TUN_ETOOBIG
 * (an entry this size can never fit the buffer: not queued). Both failures count as a drop.
 */
int tun_relay_queue_push(struct tun_relay_queue *q, const uint8_t *data, size_t len,
                         uint64_t stamp);

/* The oldest entry: 0 with data/len/stamp set (stamp may be NULL), or TUN_EAGAIN when empty.
 * The pointer is valid until the next push or pop. */
int tun_relay_queue_peek(const struct tun_relay_queue *q, const uint8_t **data, size_t *len,
                         uint64_t *stamp);

/* Remove the oldest entry (no-op when empty). */
void tun_relay_queue_pop(struct tun_relay_queue *q);

void tun_relay_queue_clear(struct tun_relay_queue *q);

#endif
