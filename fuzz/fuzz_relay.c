/*
 * Fuzz target for the relay protocol: the frame decoder (both directions; every frame that
 * decodes is encoded again and must give the same bytes), the per-client queue and the token
 * bucket (driven by the input as a list of operations and checked against their invariants).
 * Build with libFuzzer (see fuzz/README.md) or run through fuzz/standalone.c.
 */
#include "relay/frame.h"
#include "relay/queue.h"
#include "util/error.h"
#include "util/tokbucket.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t out[TUN_RELAY_MAX_FRAME];

static void check_frame(const uint8_t *buf, size_t len, enum tun_relay_dir dir)
{
    struct tun_relay_frame f;
    if (tun_relay_decode(buf, len, dir, &f) != 0)
        return;
    /* Touch everything the frame points at: ASan catches any length lie. */
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < f.len; i++)
        sink ^= f.data[i];
    (void)sink;
    int n = -1;
    size_t ext = 0; /* trailing extension bytes the encoder does not write */
    switch (f.known ? f.type : 0) {
    case 0:
        return;
    case TUN_RELAY_SERVER_CHALLENGE:
        n = tun_relay_encode_challenge(out, sizeof out, &f.info, f.challenge);
        ext = f.len;
        break;
    case TUN_RELAY_CLIENT_AUTH:
        n = tun_relay_encode_auth(out, sizeof out, f.key, f.sig, f.data, f.len);
        out[1] = f.code; /* the encoder always writes our version */
        break;
    case TUN_RELAY_AUTH_OK:
        n = tun_relay_encode_auth_ok(out, sizeof out);
        ext = f.len;
        break;
    case TUN_RELAY_AUTH_DENIED:
        n = tun_relay_encode_denied(out, sizeof out, f.code, (const char *)f.data, f.len);
        break;
    case TUN_RELAY_HEALTH:
        n = tun_relay_encode_health(out, sizeof out, f.code, (const char *)f.data, f.len);
        break;
    case TUN_RELAY_SEND:
    case TUN_RELAY_RECV:
        n = tun_relay_encode_datagram(out, sizeof out, f.type, f.key, f.data, f.len);
        break;
    case TUN_RELAY_SEND_BATCH:
    case TUN_RELAY_RECV_BATCH: {
        n = tun_relay_encode_batch(out, sizeof out, f.type, f.key, f.segment, f.data, f.len);
        size_t total = 0, count = tun_relay_batch_count(&f);
        for (size_t i = 0; i < count; i++) {
            const uint8_t *d;
            size_t dl;
            if (tun_relay_batch_get(&f, i, &d, &dl) != 0 || dl == 0 || dl > f.segment)
                abort();
            total += dl;
        }
        if (total != f.len)
            abort();
        break;
    }
    case TUN_RELAY_PEER_GONE:
        n = tun_relay_encode_peer_gone(out, sizeof out, f.key, f.code);
        break;
    case TUN_RELAY_PING:
    case TUN_RELAY_PONG:
        n = tun_relay_encode_ping(out, sizeof out, f.type, f.data);
        break;
    case TUN_RELAY_RESTARTING:
        n = tun_relay_encode_restarting(out, sizeof out, f.reconnect_in_ms, f.try_for_ms);
        break;
    default:
        abort();
    }
    if (n < 0 || (size_t)n + ext != len || memcmp(out, buf, (size_t)n) != 0)
        abort();
}

/* Operations on a small queue, checked against a shadow FIFO of lengths. */
static void run_queue(const uint8_t *p, size_t n)
{
    static uint8_t qbuf[512];
    static uint8_t payload[512];
    struct tun_relay_queue q;
    if (n < 2)
        return;
    if (tun_relay_queue_init(&q, qbuf, 64 + p[0] % 448, 1 + p[1] % 16,
                             (enum tun_relay_drop)(p[1] >> 7)) != 0)
        abort();
    size_t shadow[4096], head = 0, tail = 0;
    for (size_t i = 2; i < n; i++) {
        uint8_t op = p[i];
        if (op & 1) {
            size_t len = 1 + (op >> 1) * 4;
            memset(payload, (int)(tail & 0xff), len);
            int rc = tun_relay_queue_push(&q, payload, len, tail);
            if (rc == 0) {
                while (tail - head >= q.count)
                    head++;
                shadow[tail++ % 4096] = len;
            } else if (rc != TUN_EAGAIN && rc != TUN_ETOOBIG) {
                abort();
            }
        } else {
            const uint8_t *d;
            size_t dl;
            uint64_t stamp;
            int rc = tun_relay_queue_peek(&q, &d, &dl, &stamp);
            if ((rc == 0) != (head < tail))
                abort();
            if (rc == 0) {
                if (dl != shadow[head % 4096] || stamp != head || d < qbuf ||
                    d + dl > qbuf + q.cap || d[0] != (uint8_t)(head & 0xff) ||
                    d[dl - 1] != (uint8_t)(head & 0xff))
                    abort();
                tun_relay_queue_pop(&q);
                head++;
            }
        }
        if (q.count != tail - head || q.count > q.max_count ||
            q.bytes + q.count * TUN_RELAY_QUEUE_OVERHEAD > q.cap)
            abort();
    }
}

/* A token bucket driven by (time step, amount) pairs: never grants more than burst + rate*t. */
static void run_bucket(const uint8_t *p, size_t n)
{
    if (n < 2)
        return;
    struct tun_tokbucket tb;
    uint64_t rate = 1 + p[0] * 100u, burst = 1 + p[1] * 50u;
    if (tun_tokbucket_init(&tb, rate, burst, 1) != 0)
        abort();
    uint64_t now = 1, granted = 0;
    for (size_t i = 2; i + 1 < n; i += 2) {
        now += (uint64_t)p[i] * 997;
        uint64_t want = p[i + 1] * 3u, wait;
        int rc = tun_tokbucket_take(&tb, now, want, &wait);
        if (rc == 0) {
            granted += want;
        } else if (rc == TUN_EAGAIN) {
            if (wait == 0 || tun_tokbucket_take(&tb, now + wait, want, NULL) != 0)
                abort();
            now += wait;
            granted += want;
        } else if (rc != TUN_ETOOBIG || want <= burst) {
            abort();
        }
        if (granted > burst + (now - 1) * rate / 1000000 + 1)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    switch (data[0] & 3) {
    case 0:
        check_frame(data + 1, size - 1, TUN_RELAY_FROM_CLIENT);
        break;
    case 1:
        check_frame(data + 1, size - 1, TUN_RELAY_FROM_RELAY);
        break;
    case 2:
        run_queue(data + 1, size - 1);
        break;
    default:
        run_bucket(data + 1, size - 1);
        break;
    }
    return 0;
}
