/*
 * Fuzz target for the WebSocket framing (src/web/ws.c). Each input is a byte stream read by a
 * client and by a server reader (limits picked from the input), once with everything available
 * and once revealed in chunks: both must give the same events, error and close code. Every
 * event is then written again as frames from the peer's side and read back to the same events.
 * A frame header that decodes must re-encode to the same bytes, and the UTF-8 validator and the
 * masking routine are compared with simple reference versions. Build with libFuzzer (see
 * fuzz/README.md) or run through fuzz/standalone.c.
 */
#include "util/error.h"
#include "web/ws.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_IN     65536
#define MAX_EVENTS 4096

struct ev_rec {
    int type, opcode, close_code;
    size_t len, at; /* payload copy at arena[at] */
};

struct run {
    struct ev_rec ev[MAX_EVENTS];
    int n;
    int rc; /* 0, or the reader's error */
    int close_code;
    size_t end; /* bytes consumed */
    uint8_t arena[MAX_IN + 256];
    size_t used;
};

static struct run whole, chunked, replay;
static uint8_t work[MAX_IN], stream[2 * MAX_IN + 16 * MAX_EVENTS];
static uint8_t asm_buf[MAX_IN];

static void check(int ok)
{
    if (!ok)
        abort();
}

struct cfg {
    size_t max_message, asm_cap;
};

static const struct cfg cfgs[4] = {
    {0, sizeof(asm_buf)}, /* defaults: 1 MiB limit, assembly room for any input */
    {300, 300},
    {1000, 100}, /* fragmented messages capped by the assembly buffer */
    {64, 0},     /* no assembly buffer */
};

static void record(struct run *r, const struct tun_ws_event *e)
{
    if (e->type == TUN_WS_EV_NONE)
        return;
    check(r->n < MAX_EVENTS);
    struct ev_rec *x = &r->ev[r->n++];
    x->type = e->type;
    x->opcode = e->opcode;
    x->close_code = e->close_code;
    x->len = e->len;
    x->at = r->used;
    check(e->len <= sizeof(r->arena) - r->used);
    if (e->len)
        memcpy(r->arena + r->used, e->data, e->len);
    r->used += e->len;
    if (e->type == TUN_WS_EV_CLOSE && e->len >= 2) {
        /* The reason lies inside the payload, after the code. */
        check(e->reason == (const char *)e->data + 2 && e->reason_len == e->len - 2);
    }
}

/* Read data[0..size) revealed `max_step`-ish bytes at a time (0: all at once). */
static void read_stream(struct run *r, enum tun_ws_role role, const struct cfg *c,
                        const uint8_t *data, size_t size, uint32_t seed, size_t max_step)
{
    struct tun_ws_reader rd;
    tun_ws_reader_init(&rd, role, c->max_message, c->asm_cap ? asm_buf : NULL, c->asm_cap);
    memcpy(work, data, size);
    r->n = 0;
    r->rc = 0;
    r->close_code = 0;
    r->used = 0;
    size_t off = 0, avail = max_step ? 0 : size;
    uint32_t x = seed | 1;
    while (off < size) {
        struct tun_ws_event e;
        int rc = tun_ws_read(&rd, work + off, avail - off, &e);
        if (rc < 0) {
            check(e.type == TUN_WS_EV_NONE);
            r->rc = rc;
            r->close_code = rd.close_code;
            if (rc != TUN_ECLOSED)
                check(rd.why != NULL &&
                      (rd.close_code == 1002 || rd.close_code == 1007 || rd.close_code == 1009));
            break;
        }
        if (rc == 0) {
            check(e.type == TUN_WS_EV_NONE);
            if (avail == size)
                break;
            check(rd.need > avail - off);
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            avail += 1 + x % max_step;
            if (avail > size)
                avail = size;
            continue;
        }
        check((size_t)rc <= avail - off);
        if (e.type == TUN_WS_EV_MESSAGE) {
            check(e.opcode == TUN_WS_TEXT || e.opcode == TUN_WS_BINARY);
            if (e.opcode == TUN_WS_TEXT)
                check(tun_ws_utf8_valid(e.data, e.len));
            check(e.len <= rd.max_message);
        }
        if (e.type == TUN_WS_EV_PING || e.type == TUN_WS_EV_PONG || e.type == TUN_WS_EV_CLOSE)
            check(e.len <= TUN_WS_MAX_CONTROL);
        record(r, &e);
        off += (size_t)rc;
    }
    r->end = off;
}

static int same_run(const struct run *a, const struct run *b)
{
    if (a->n != b->n || a->rc != b->rc || a->close_code != b->close_code || a->end != b->end)
        return 0;
    for (int i = 0; i < a->n; i++) {
        const struct ev_rec *x = &a->ev[i], *y = &b->ev[i];
        if (x->type != y->type || x->opcode != y->opcode || x->close_code != y->close_code ||
            x->len != y->len || memcmp(a->arena + x->at, b->arena + y->at, x->len) != 0)
            return 0;
    }
    return 1;
}

/* The events again, as single frames sent by the peer of `role`: they must read back the same. */
static void round_trip(const struct run *r, enum tun_ws_role role, const struct cfg *c,
                       uint32_t seed)
{
    uint8_t key[4] = {(uint8_t)seed, (uint8_t)(seed >> 8), (uint8_t)(seed >> 16),
                      (uint8_t)(seed >> 24)};
    const uint8_t *mask = role == TUN_WS_SERVER ? key : NULL;
    size_t n = 0;
    for (int i = 0; i < r->n; i++) {
        const struct ev_rec *e = &r->ev[i];
        const uint8_t *p = r->arena + e->at;
        int w;
        switch (e->type) {
        case TUN_WS_EV_MESSAGE:
            w = tun_ws_frame_write(stream + n, sizeof(stream) - n, 1, e->opcode, p, e->len, mask);
            break;
        case TUN_WS_EV_PING:
        case TUN_WS_EV_PONG:
            w = tun_ws_frame_write(stream + n, sizeof(stream) - n, 1,
                                   e->type == TUN_WS_EV_PING ? TUN_WS_PING : TUN_WS_PONG, p, e->len,
                                   mask);
            break;
        default:
            check(e->type == TUN_WS_EV_CLOSE && i == r->n - 1);
            if (e->close_code == TUN_WS_CLOSE_NO_STATUS)
                w = tun_ws_close_write(stream + n, sizeof(stream) - n, 0, NULL, 0, mask);
            else
                w = tun_ws_close_write(stream + n, sizeof(stream) - n, e->close_code,
                                       (const char *)p + 2, e->len - 2, mask);
            break;
        }
        check(w > 0);
        n += (size_t)w;
    }
    read_stream(&replay, role, c, stream, n, seed, 0);
    check(replay.rc == 0 && replay.end == n && replay.n == r->n);
    for (int i = 0; i < r->n; i++) {
        const struct ev_rec *x = &r->ev[i], *y = &replay.ev[i];
        check(x->type == y->type && x->opcode == y->opcode && x->close_code == y->close_code &&
              x->len == y->len && memcmp(r->arena + x->at, replay.arena + y->at, x->len) == 0);
    }
}

static int utf8_ref(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i], cp;
        size_t len;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000))
            return 0;
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

static void header_codec(const uint8_t *data, size_t size)
{
    for (int role = TUN_WS_CLIENT; role <= TUN_WS_SERVER; role++) {
        struct tun_ws_frame f;
        const char *why = NULL;
        int hl = tun_ws_header_decode(data, size, (enum tun_ws_role)role, &f, &why);
        check(hl == 0 || hl == TUN_EPROTO || (hl >= 2 && hl <= TUN_WS_MAX_HEADER));
        check(hl != TUN_EPROTO || why != NULL);
        if (hl <= 0)
            continue;
        uint8_t h[TUN_WS_MAX_HEADER];
        int hl2 = tun_ws_header_encode(h, f.fin, f.opcode, f.len, f.masked ? f.mask : NULL);
        check(hl2 == hl && (size_t)hl == f.header_len && memcmp(h, data, (size_t)hl) == 0);
        /* Any prefix of a valid header needs more bytes. */
        for (int k = 0; k < hl; k++)
            check(tun_ws_header_decode(data, (size_t)k, (enum tun_ws_role)role, &f, NULL) == 0);
    }
}

static void masking(const uint8_t *data, size_t size)
{
    if (size < 5)
        return;
    size_t n = size - 4 < 1024 ? size - 4 : 1024, off = data[0] % 8;
    uint64_t phase = data[1];
    static uint8_t a[1024 + 8];
    memcpy(a + off, data + 4, n);
    tun_ws_mask(a + off, n, data, phase);
    for (size_t i = 0; i < n; i++)
        check(a[off + i] == (uint8_t)(data[4 + i] ^ data[(phase + i) & 3]));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > MAX_IN)
        return 0;
    uint32_t seed = (uint32_t)size * 2654435761u;
    for (size_t i = 0; i < size && i < 16; i++)
        seed = seed * 31 + data[i];
    const struct cfg *c = &cfgs[(seed >> 7) & 3];
    static const size_t steps[] = {1, 3, 16, 200};
    for (int role = TUN_WS_CLIENT; role <= TUN_WS_SERVER; role++) {
        read_stream(&whole, (enum tun_ws_role)role, c, data, size, seed, 0);
        read_stream(&chunked, (enum tun_ws_role)role, c, data, size, seed, steps[seed & 3]);
        check(same_run(&whole, &chunked));
        round_trip(&whole, (enum tun_ws_role)role, c, seed);
    }
    header_codec(data, size);
    masking(data, size);
    check(tun_ws_utf8_valid(data, size) == utf8_ref(data, size));
    if (size > 3)
        check(tun_ws_utf8_valid(data + 3, size - 3) == utf8_ref(data + 3, size - 3));
    return 0;
}
