/* Tests for src/web/ws.c: RFC 6455 framing, masking, close frames and the reader. */
#include "test.h"
#include "util/error.h"
#include "web/ws.h"

#include <stdlib.h>

static const uint8_t rfc_key[4] = {0x37, 0xfa, 0x21, 0x3d};

/* One event, copied out of the reader's buffers so that later calls cannot change it. */
struct got {
    int type, opcode, close_code;
    size_t len;
    uint8_t data[70000];
};

/* Feed stream[0..n) to a fresh reader `step` bytes at a time (bytes are revealed, never
 * dropped before they are consumed). Events go to out[0..max); returns the number of events, or
 * the reader's error. *end gets the offset after the last consumed byte. */
static uint8_t asm_buf[1 << 21];
static uint8_t work[1 << 21];

static int feed(enum tun_ws_role role, size_t max_message, size_t asm_cap, const uint8_t *stream,
                size_t n, size_t step, struct got *out, int max, size_t *end,
                struct tun_ws_reader *rd)
{
    tun_ws_reader_init(rd, role, max_message, asm_cap ? asm_buf : NULL, asm_cap);
    memcpy(work, stream, n);
    size_t off = 0, avail = 0;
    int k = 0;
    while (off < n) {
        struct tun_ws_event ev;
        int rc = tun_ws_read(rd, work + off, avail - off, &ev);
        if (rc < 0) {
            *end = off;
            return rc;
        }
        if (rc == 0) {
            CHECK_INT_EQ(ev.type, TUN_WS_EV_NONE);
            if (avail == n)
                break;
            /* The need hint never asks for bytes already there. */
            CHECK(rd->need > avail - off);
            avail = avail + step < n ? avail + step : n;
            continue;
        }
        if (ev.type != TUN_WS_EV_NONE && k < max) {
            out[k].type = ev.type;
            out[k].opcode = ev.opcode;
            out[k].close_code = ev.close_code;
            out[k].len = ev.len;
            if (ev.len)
                memcpy(out[k].data, ev.data, ev.len);
            k++;
        }
        off += (size_t)rc;
    }
    *end = off;
    return k;
}

static struct got got[8];
static struct tun_ws_reader rd;

static void test_rfc_examples(void)
{
    size_t end;
    /* §5.7: a single-frame unmasked text message, read by a client. */
    static const uint8_t hello[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    for (size_t step = 1; step <= sizeof(hello); step++) {
        CHECK_INT_EQ(feed(TUN_WS_CLIENT, 0, 0, hello, sizeof(hello), step, got, 8, &end, &rd), 1);
        CHECK_INT_EQ(end, sizeof(hello));
        CHECK(got[0].type == TUN_WS_EV_MESSAGE && got[0].opcode == TUN_WS_TEXT);
        CHECK(got[0].len == 5 && memcmp(got[0].data, "Hello", 5) == 0);
    }
    /* A server refuses it: it is not masked. */
    CHECK_INT_EQ(feed(TUN_WS_SERVER, 0, 0, hello, sizeof(hello), 7, got, 8, &end, &rd), TUN_EPROTO);
    CHECK_INT_EQ(rd.close_code, 1002);

    /* A single-frame masked text message, read by a server. */
    static const uint8_t masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                     0x7f, 0x9f, 0x4d, 0x51, 0x58};
    for (size_t step = 1; step <= sizeof(masked); step++) {
        CHECK_INT_EQ(feed(TUN_WS_SERVER, 0, 0, masked, sizeof(masked), step, got, 8, &end, &rd), 1);
        CHECK(got[0].len == 5 && memcmp(got[0].data, "Hello", 5) == 0);
    }
    CHECK_INT_EQ(feed(TUN_WS_CLIENT, 0, 0, masked, sizeof(masked), 3, got, 8, &end, &rd),
                 TUN_EPROTO);

    /* The writer produces exactly these bytes. */
    uint8_t out[64];
    CHECK_INT_EQ(tun_ws_frame_write(out, sizeof(out), 1, TUN_WS_TEXT, "Hello", 5, NULL),
                 sizeof(hello));
    CHECK_MEM_EQ(out, hello, sizeof(hello));
    CHECK_INT_EQ(tun_ws_frame_write(out, sizeof(out), 1, TUN_WS_TEXT, "Hello", 5, rfc_key),
                 sizeof(masked));
    CHECK_MEM_EQ(out, masked, sizeof(masked));

    /* A fragmented unmasked text message. */
    static const uint8_t frag[] = {0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f};
    for (size_t step = 1; step <= sizeof(frag); step++) {
        CHECK_INT_EQ(feed(TUN_WS_CLIENT, 0, 64, frag, sizeof(frag), step, got, 8, &end, &rd), 1);
        CHECK(got[0].opcode == TUN_WS_TEXT && got[0].len == 5);
        CHECK_MEM_EQ(got[0].data, "Hello", 5);
    }
    CHECK_INT_EQ(tun_ws_frame_write(out, sizeof(out), 0, TUN_WS_TEXT, "Hel", 3, NULL), 5);
    CHECK_INT_EQ(tun_ws_frame_write(out + 5, sizeof(out) - 5, 1, TUN_WS_CONT, "lo", 2, NULL), 4);
    CHECK_MEM_EQ(out, frag, sizeof(frag));

    /* Unmasked ping, masked pong. */
    static const uint8_t ping[] = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    CHECK_INT_EQ(feed(TUN_WS_CLIENT, 0, 0, ping, sizeof(ping), 1, got, 8, &end, &rd), 1);
    CHECK(got[0].type == TUN_WS_EV_PING && got[0].len == 5);
    CHECK_MEM_EQ(got[0].data, "Hello", 5);
    static const uint8_t pong[] = {0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                   0x7f, 0x9f, 0x4d, 0x51, 0x58};
    CHECK_INT_EQ(feed(TUN_WS_SERVER, 0, 0, pong, sizeof(pong), 1, got, 8, &end, &rd), 1);
    CHECK(got[0].type == TUN_WS_EV_PONG && got[0].len == 5);
    CHECK_MEM_EQ(got[0].data, "Hello", 5);
    CHECK_INT_EQ(tun_ws_frame_write(out, sizeof(out), 1, TUN_WS_PONG, "Hello", 5, rfc_key),
                 sizeof(pong));
    CHECK_MEM_EQ(out, pong, sizeof(pong));

    /* 256 bytes: 16-bit length; 64 KiB: 64-bit length. */
    static uint8_t big[10 + 65536];
    uint8_t hdr[TUN_WS_MAX_HEADER];
    CHECK_INT_EQ(tun_ws_header_encode(hdr, 1, TUN_WS_BINARY, 256, NULL), 4);
    CHECK_MEM_EQ(hdr, "\x82\x7e\x01\x00", 4);
    CHECK_INT_EQ(tun_ws_header_encode(hdr, 1, TUN_WS_BINARY, 65536, NULL), 10);
    CHECK_MEM_EQ(hdr, "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    for (size_t i = 0; i < 65536; i++)
        big[10 + i] = (uint8_t)(i * 7);
    memcpy(big, "\x82\x7e\x01\x00", 4);
    memmove(big + 4, big + 10, 256);
    CHECK_INT_EQ(feed(TUN_WS_CLIENT, 0, 0, big, 4 + 256, 100, got, 8, &end, &rd), 1);
    CHECK(got[0].opcode == TUN_WS_BINARY && got[0].len == 256);
    for (size_t i = 0; i < 65536; i++)
        big[10 + i] = (uint8_t)(i * 7);
    memcpy(big, "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    CHECK_INT_EQ(feed(TUN_WS_CLIENT, 0, 0, big, sizeof(big), 4096, got, 8, &end, &rd), 1);
    CHECK(got[0].opcode == TUN_WS_BINARY && got[0].len == 65536);
    CHECK_MEM_EQ(got[0].data, big + 10, 65536);
    /* The need hint: after the 10 header bytes the whole frame is asked for. */
    tun_ws_reader_init(&rd, TUN_WS_CLIENT, 0, NULL, 0);
    struct tun_ws_event ev;
    CHECK_INT_EQ(tun_ws_read(&rd, big, 1, &ev), 0);
    CHECK_INT_EQ(rd.need, 2);
    CHECK_INT_EQ(tun_ws_read(&rd, big, 2, &ev), 0);
    CHECK_INT_EQ(rd.need, 10);
    CHECK_INT_EQ(tun_ws_read(&rd, big, 10, &ev), 0);
    CHECK_INT_EQ(rd.need, 10 + 65536);
}

/* The common case is zero-copy: the message is a view into the caller's buffer. */
static void test_zero_copy(void)
{
    uint8_t buf[64];
    int n = tun_ws_frame_write(buf, sizeof(buf), 1, TUN_WS_BINARY, "abcdef", 6, rfc_key);
    CHECK_INT_EQ(n, 2 + 4 + 6);
    struct tun_ws_reader r;
    struct tun_ws_event ev;
    tun_ws_reader_init(&r, TUN_WS_SERVER, 0, NULL, 0);
    CHECK_INT_EQ(tun_ws_read(&r, buf, (size_t)n, &ev), n);
    CHECK(ev.type == TUN_WS_EV_MESSAGE && ev.data == buf + 6 && ev.len == 6);
    CHECK_MEM_EQ(buf + 6, "abcdef", 6); /* unmasked in place */
}

/* A stream with a fragmented message, interleaved control frames and a close, both roles. */
static void test_stream(void)
{
    for (int role = TUN_WS_CLIENT; role <= TUN_WS_SERVER; role++) {
        /* The sender is the other side: a client sends masked frames. */
        const uint8_t *mask = role == TUN_WS_SERVER ? rfc_key : NULL;
        static uint8_t s[4096];
        size_t n = 0;
        n += (size_t)tun_ws_frame_write(s + n, sizeof(s) - n, 0, TUN_WS_BINARY, "ab", 2, mask);
        n += (size_t)tun_ws_frame_write(s + n, sizeof(s) - n, 1, TUN_WS_PING, "p1", 2, mask);
        n += (size_t)tun_ws_frame_write(s + n, sizeof(s) - n, 0, TUN_WS_CONT, "", 0, mask);
        n += (size_t)tun_ws_frame_write(s + n, sizeof(s) - n, 1, TUN_WS_PONG, "", 0, mask);
        n += (size_t)tun_ws_frame_write(s + n, sizeof(s) - n, 1, TUN_WS_CONT, "cde", 3, mask);
        /* A text message whose 3-byte character is split between fragments. */
        n += (size_t)tun_ws_frame_write(s + n, sizeof(s) - n, 0, TUN_WS_TEXT, "\xe2\x82", 2, mask);
        n += (size_t)tun_ws_frame_write(s + n, sizeof(s) - n, 1, TUN_WS_CONT, "\xac!", 2, mask);
        n += (size_t)tun_ws_frame_write(s + n, sizeof(s) - n, 1, TUN_WS_TEXT, "", 0, mask);
        n += (size_t)tun_ws_close_write(s + n, sizeof(s) - n, 1001, "bye", 3, mask);
        size_t frames_end = n;
        memcpy(s + n, "\x81\x00", 2); /* after the close: never read */
        n += 2;
        for (size_t step = 1; step <= n; step++) {
            size_t end;
            int k = feed((enum tun_ws_role)role, 0, 64, s, n, step, got, 8, &end, &rd);
            CHECK_INT_EQ(k, TUN_ECLOSED);
            CHECK_INT_EQ(end, frames_end);
        }
        /* feed() returns the error, so count the events with a bounded stream. */
        size_t end;
        int k = feed((enum tun_ws_role)role, 0, 64, s, frames_end, 5, got, 8, &end, &rd);
        CHECK_INT_EQ(k, 6);
        CHECK(got[0].type == TUN_WS_EV_PING && got[0].len == 2 &&
              memcmp(got[0].data, "p1", 2) == 0);
        CHECK(got[1].type == TUN_WS_EV_PONG && got[1].len == 0);
        CHECK(got[2].type == TUN_WS_EV_MESSAGE && got[2].opcode == TUN_WS_BINARY);
        CHECK(got[2].len == 5 && memcmp(got[2].data, "abcde", 5) == 0);
        CHECK(got[3].opcode == TUN_WS_TEXT && got[3].len == 4);
        CHECK_MEM_EQ(got[3].data, "\xe2\x82\xac!", 4);
        CHECK(got[4].type == TUN_WS_EV_MESSAGE && got[4].opcode == TUN_WS_TEXT && got[4].len == 0);
        CHECK(got[5].type == TUN_WS_EV_CLOSE && got[5].close_code == 1001 && got[5].len == 5);
        CHECK_INT_EQ(end, frames_end);
        struct tun_ws_event ev;
        CHECK_INT_EQ(tun_ws_read(&rd, s, 2, &ev), TUN_ECLOSED);
    }
}

static size_t frame(uint8_t *out, const char *hex)
{
    size_t n = 0;
    for (const char *p = hex; p[0] && p[1]; p += 2) {
        unsigned v;
        if (*p == ' ') {
            p--;
            continue;
        }
        sscanf(p, "%2x", &v);
        out[n++] = (uint8_t)v;
    }
    return n;
}

struct bad_frame {
    int role;
    const char *hex;
    int rc, code;
};

static const struct bad_frame bad_frames[] = {
    /* RSV bits, each of them. */
    {TUN_WS_CLIENT, "c100", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "a100", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "9100", TUN_EPROTO, 1002},
    /* Unknown opcodes. */
    {TUN_WS_CLIENT, "8300", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "8700", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "8b00", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "8f00", TUN_EPROTO, 1002},
    /* Mask direction. */
    {TUN_WS_CLIENT, "828000000000", TUN_EPROTO, 1002},
    {TUN_WS_SERVER, "8200", TUN_EPROTO, 1002},
    /* Lengths not minimally encoded or with the top bit set. */
    {TUN_WS_CLIENT, "827e007d", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "827e0000", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "827f000000000000ffff", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "827f0000000000000001", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "827f8000000000000000", TUN_EPROTO, 1002},
    /* Control frames: fragmented, too long. */
    {TUN_WS_CLIENT, "0900", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "0800", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "897e007e", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "8a7f0000000000010000", TUN_EPROTO, 1002},
    /* Continuation without a message; a new message inside a fragmented one. */
    {TUN_WS_CLIENT, "8000", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "0000", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "020161810162", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "0201618201620000", TUN_EPROTO, 1002},
    /* Too big: a single frame over the limit (1 MiB) fails from its header alone. */
    {TUN_WS_CLIENT, "827f0000000000100001", TUN_ETOOBIG, 1009},
    {TUN_WS_CLIENT, "827f7fffffffffffffff", TUN_ETOOBIG, 1009},
    {TUN_WS_SERVER, "82ff000000000010000100000000", TUN_ETOOBIG, 1009},
    /* Invalid UTF-8 in text: single frame, fragmented, truncated at the end. */
    {TUN_WS_CLIENT, "8102c0af", TUN_EFORMAT, 1007},
    {TUN_WS_CLIENT, "8103eda080", TUN_EFORMAT, 1007},
    {TUN_WS_CLIENT, "0102e282800161", TUN_EFORMAT, 1007},
    {TUN_WS_CLIENT, "0101ce8000", TUN_EFORMAT, 1007},
    /* Close frames: one byte, codes that may not be sent, bad reason. */
    {TUN_WS_CLIENT, "880103", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "880203e7", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "880203ec", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "880203ed", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "880203ee", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "880203f7", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "88020bb7", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "88021388", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "88020000", TUN_EPROTO, 1002},
    {TUN_WS_CLIENT, "880403e8c0af", TUN_EFORMAT, 1007},
    {TUN_WS_CLIENT, "880303e8ff", TUN_EFORMAT, 1007},
};

static void test_bad_frames(void)
{
    static uint8_t s[256];
    for (size_t i = 0; i < sizeof(bad_frames) / sizeof(bad_frames[0]); i++) {
        const struct bad_frame *b = &bad_frames[i];
        size_t n = frame(s, b->hex);
        for (size_t step = 1; step <= n; step++) {
            size_t end;
            int rc = feed((enum tun_ws_role)b->role, 0, 64, s, n, step, got, 8, &end, &rd);
            if (rc != b->rc || rd.close_code != b->code || !rd.why) {
                fprintf(stderr, "frame %zu (%s) step %zu: rc %d code %d\n", i, b->hex, step, rc,
                        rd.close_code);
                CHECK(0);
                break;
            }
        }
        /* Sticky. */
        struct tun_ws_event ev;
        CHECK_INT_EQ(tun_ws_read(&rd, (uint8_t *)"\x82\x00", 2, &ev), b->rc);
        CHECK_INT_EQ(ev.type, TUN_WS_EV_NONE);
    }
}

static void test_limits(void)
{
    size_t end;
    static uint8_t s[(1 << 20) + 64];
    static uint8_t payload[(1 << 20) + 1];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i ^ (i >> 8));

    /* Exactly the default limit is fine, masked, from a client. */
    int n = tun_ws_frame_write(s, sizeof(s), 1, TUN_WS_BINARY, payload, 1 << 20, rfc_key);
    CHECK(n == (1 << 20) + 14);
    struct tun_ws_reader r;
    struct tun_ws_event ev;
    tun_ws_reader_init(&r, TUN_WS_SERVER, 0, NULL, 0);
    CHECK_INT_EQ(r.max_message, TUN_WS_DEFAULT_MAX_MESSAGE);
    CHECK_INT_EQ(tun_ws_read(&r, s, (size_t)n, &ev), n);
    CHECK(ev.len == (1 << 20) && memcmp(ev.data, payload, 1 << 20) == 0);

    /* A custom limit, single frame and fragmented, and the assembly buffer's own limit. */
    n = tun_ws_frame_write(s, sizeof(s), 1, TUN_WS_BINARY, payload, 100, NULL);
    tun_ws_reader_init(&r, TUN_WS_CLIENT, 100, NULL, 0);
    CHECK_INT_EQ(tun_ws_read(&r, s, (size_t)n, &ev), n);
    n = tun_ws_frame_write(s, sizeof(s), 1, TUN_WS_BINARY, payload, 101, NULL);
    tun_ws_reader_init(&r, TUN_WS_CLIENT, 100, NULL, 0);
    CHECK_INT_EQ(tun_ws_read(&r, s, 4, &ev), TUN_ETOOBIG);
    CHECK_INT_EQ(r.close_code, 1009);

    size_t m = 0;
    m += (size_t)tun_ws_frame_write(s + m, sizeof(s) - m, 0, TUN_WS_BINARY, payload, 60, NULL);
    m += (size_t)tun_ws_frame_write(s + m, sizeof(s) - m, 1, TUN_WS_CONT, payload + 60, 40, NULL);
    CHECK_INT_EQ(feed(TUN_WS_CLIENT, 100, 100, s, m, 7, got, 8, &end, &rd), 1);
    CHECK(got[0].len == 100 && memcmp(got[0].data, payload, 100) == 0);
    CHECK_INT_EQ(feed(TUN_WS_CLIENT, 99, 100, s, m, 7, got, 8, &end, &rd), TUN_ETOOBIG);
    CHECK_INT_EQ(feed(TUN_WS_CLIENT, 100, 99, s, m, 7, got, 8, &end, &rd), TUN_ETOOBIG);
    /* Without an assembly buffer, fragmented messages with data cannot be taken. */
    CHECK_INT_EQ(feed(TUN_WS_CLIENT, 100, 0, s, m, 7, got, 8, &end, &rd), TUN_ETOOBIG);
    CHECK_INT_EQ(rd.close_code, 1009);
    /* ... but single-frame messages can. */
    n = tun_ws_frame_write(s, sizeof(s), 1, TUN_WS_BINARY, payload, 100, NULL);
    CHECK_INT_EQ(feed(TUN_WS_CLIENT, 100, 0, s, (size_t)n, 7, got, 8, &end, &rd), 1);

    /* Limits above TUN_WS_MAX_MESSAGE_LIMIT are clamped. */
    tun_ws_reader_init(&r, TUN_WS_CLIENT, (size_t)1 << 40, NULL, 0);
    CHECK_INT_EQ(r.max_message, TUN_WS_MAX_MESSAGE_LIMIT);
    /* Bad arguments. */
    CHECK_INT_EQ(tun_ws_read(NULL, s, 1, &ev), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_read(&r, NULL, 1, &ev), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_read(&r, s, 1, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_read(&r, NULL, 0, &ev), 0);
}

static void test_header_codec(void)
{
    uint8_t h[TUN_WS_MAX_HEADER];
    struct tun_ws_frame f;
    const char *why;
    /* Every length boundary round-trips with the shortest encoding, masked and not. */
    uint64_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 1u << 31, (1ull << 63) - 1};
    size_t hls[] = {2, 2, 2, 4, 4, 4, 10, 10, 10};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        for (int masked = 0; masked <= 1; masked++) {
            int hl = tun_ws_header_encode(h, 0, TUN_WS_BINARY, lens[i], masked ? rfc_key : NULL);
            CHECK_INT_EQ(hl, hls[i] + (masked ? 4 : 0));
            enum tun_ws_role role = masked ? TUN_WS_SERVER : TUN_WS_CLIENT;
            for (int k = 0; k < hl; k++)
                CHECK_INT_EQ(tun_ws_header_decode(h, (size_t)k, role, &f, &why), 0);
            CHECK_INT_EQ(tun_ws_header_decode(h, (size_t)hl, role, &f, &why), hl);
            CHECK(f.fin == 0 && f.opcode == TUN_WS_BINARY && f.masked == masked);
            CHECK(f.len == lens[i] && f.header_len == (size_t)hl);
            if (masked)
                CHECK_MEM_EQ(f.mask, rfc_key, 4);
        }
    }
    CHECK_INT_EQ(tun_ws_header_encode(h, 1, 3, 0, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_header_encode(h, 1, 0xB, 0, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_header_encode(h, 0, TUN_WS_PING, 0, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_header_encode(h, 1, TUN_WS_CLOSE, 126, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_header_encode(h, 1, TUN_WS_PONG, 125, NULL), 2);
    CHECK_INT_EQ(tun_ws_header_encode(h, 1, TUN_WS_BINARY, 1ull << 63, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_header_encode(NULL, 1, TUN_WS_BINARY, 0, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_header_decode(h, 2, 0, &f, &why), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_header_decode(NULL, 2, TUN_WS_CLIENT, &f, &why), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_header_decode(h, 2, TUN_WS_CLIENT, NULL, &why), TUN_EINVAL);

    /* frame_write: every capacity below the frame size is TUN_ETOOBIG. */
    uint8_t buf[300];
    static const uint8_t p[200] = {1, 2, 3};
    int need = tun_ws_frame_write(buf, sizeof(buf), 1, TUN_WS_BINARY, p, 200, rfc_key);
    CHECK_INT_EQ(need, 4 + 4 + 200);
    for (int cap = 0; cap < need; cap++)
        CHECK_INT_EQ(tun_ws_frame_write(buf, (size_t)cap, 1, TUN_WS_BINARY, p, 200, rfc_key),
                     TUN_ETOOBIG);
    CHECK_INT_EQ(tun_ws_frame_write(buf, sizeof(buf), 1, TUN_WS_PING, p, 126, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_frame_write(buf, sizeof(buf), 1, TUN_WS_BINARY, NULL, 1, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_frame_write(buf, sizeof(buf), 1, TUN_WS_BINARY, NULL, 0, NULL), 2);
}

static void naive_mask(uint8_t *d, size_t n, const uint8_t k[4], uint64_t off)
{
    for (size_t i = 0; i < n; i++)
        d[i] ^= k[(off + i) & 3];
}

static void test_mask(void)
{
    static uint8_t a[300], b[300];
    const uint8_t key[4] = {0xde, 0xad, 0xbe, 0xef};
    for (size_t align = 0; align < 8; align++) {
        for (size_t n = 0; n < 200; n += (n < 40 ? 1 : 13)) {
            for (uint64_t off = 0; off < 6; off++) {
                for (size_t i = 0; i < n; i++)
                    a[align + i] = b[align + i] = (uint8_t)(i * 31 + n);
                tun_ws_mask(a + align, n, key, off);
                naive_mask(b + align, n, key, off);
                CHECK(memcmp(a + align, b + align, n) == 0);
            }
        }
    }
    /* Masking in pieces equals masking at once; masking twice unmasks. */
    for (size_t i = 0; i < 250; i++)
        a[i] = b[i] = (uint8_t)i;
    tun_ws_mask(a, 250, key, 0);
    tun_ws_mask(b, 3, key, 0);
    tun_ws_mask(b + 3, 100, key, 3);
    tun_ws_mask(b + 103, 147, key, 103);
    CHECK_MEM_EQ(a, b, 250);
    tun_ws_mask(a, 250, key, 0);
    for (size_t i = 0; i < 250; i++)
        CHECK_INT_EQ(a[i], i);
    tun_ws_mask(NULL, 5, key, 0); /* ignored */

    uint8_t k1[4], k2[4];
    CHECK_INT_EQ(tun_ws_new_mask(k1), 0);
    CHECK_INT_EQ(tun_ws_new_mask(k2), 0);
    CHECK(memcmp(k1, k2, 4) != 0 || memcmp(k1, "\0\0\0\0", 4) != 0);
    CHECK_INT_EQ(tun_ws_new_mask(NULL), TUN_EINVAL);
}

static void test_utf8(void)
{
    static const char *good[] = {
        "",
        "plain ascii text that is longer than eight bytes",
        "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", /* κόσμε */
        "\xc2\x80",
        "\xdf\xbf",
        "\xe0\xa0\x80",
        "\xed\x9f\xbf", /* U+D7FF */
        "\xee\x80\x80", /* U+E000 */
        "\xef\xbf\xbf",
        "\xf0\x90\x80\x80",
        "\xf4\x8f\xbf\xbf", /* U+10FFFF */
        "12345678\xe2\x82\xac",
    };
    static const char *badu[] = {
        "\x80",
        "\xbf",
        "\xc0\x80",
        "\xc1\xbf",
        "\xe0\x80\x80",
        "\xe0\x9f\xbf",
        "\xed\xa0\x80",
        "\xed\xbf\xbf",
        "\xf0\x80\x80\x80",
        "\xf0\x8f\xbf\xbf",
        "\xf4\x90\x80\x80",
        "\xf5\x80\x80\x80",
        "\xfe",
        "\xff",
        "\xc2",
        "\xe2\x82",
        "\xf0\x90\x80",
        "\xc2\x41",
        "\xe2\x28\xa1",
        "abcdefgh\xe2\x82",
        "\xf0\x90\x28\x80",
        "\xf0\x90\x80\x28",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        CHECK(tun_ws_utf8_valid((const uint8_t *)good[i], strlen(good[i])));
    for (size_t i = 0; i < sizeof(badu) / sizeof(badu[0]); i++)
        if (tun_ws_utf8_valid((const uint8_t *)badu[i], strlen(badu[i]))) {
            fprintf(stderr, "invalid UTF-8 %zu accepted\n", i);
            CHECK(0);
        }
    CHECK(tun_ws_utf8_valid(NULL, 0));
    CHECK(!tun_ws_utf8_valid(NULL, 1));
    CHECK(tun_ws_utf8_valid((const uint8_t *)"a\0b", 3)); /* NUL is valid UTF-8 */

    /* Every code point encodes to something the validator accepts, surrogates excepted. */
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp += (cp < 0x20000 ? 1 : 97)) {
        uint8_t e[4];
        size_t n;
        if (cp < 0x80) {
            e[0] = (uint8_t)cp;
            n = 1;
        } else if (cp < 0x800) {
            e[0] = (uint8_t)(0xC0 | cp >> 6);
            e[1] = (uint8_t)(0x80 | (cp & 0x3F));
            n = 2;
        } else if (cp < 0x10000) {
            e[0] = (uint8_t)(0xE0 | cp >> 12);
            e[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            e[2] = (uint8_t)(0x80 | (cp & 0x3F));
            n = 3;
        } else {
            e[0] = (uint8_t)(0xF0 | cp >> 18);
            e[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
            e[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            e[3] = (uint8_t)(0x80 | (cp & 0x3F));
            n = 4;
        }
        int surrogate = cp >= 0xD800 && cp <= 0xDFFF;
        if (tun_ws_utf8_valid(e, n) != !surrogate) {
            fprintf(stderr, "U+%04X misjudged\n", (unsigned)cp);
            CHECK(0);
        }
    }
}

static void test_close(void)
{
    for (int code = -1; code < 6000; code++) {
        int expect = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
                     (code >= 3000 && code <= 4999);
        CHECK_INT_EQ(tun_ws_close_code_ok(code), expect);
    }
    uint8_t buf[200];
    /* Code 0: an empty close body, which the peer sees as 1005. */
    int n = tun_ws_close_write(buf, sizeof(buf), 0, NULL, 0, NULL);
    CHECK_INT_EQ(n, 2);
    CHECK_MEM_EQ(buf, "\x88\x00", 2);
    struct tun_ws_reader r;
    struct tun_ws_event ev;
    tun_ws_reader_init(&r, TUN_WS_CLIENT, 0, NULL, 0);
    CHECK_INT_EQ(tun_ws_read(&r, buf, 2, &ev), 2);
    CHECK(ev.type == TUN_WS_EV_CLOSE && ev.close_code == 1005 && ev.reason_len == 0);

    /* A 123-byte reason is the maximum; the frame round-trips masked. */
    char reason[124];
    memset(reason, 'r', sizeof(reason));
    n = tun_ws_close_write(buf, sizeof(buf), 4000, reason, 123, rfc_key);
    CHECK_INT_EQ(n, 2 + 4 + 125);
    tun_ws_reader_init(&r, TUN_WS_SERVER, 0, NULL, 0);
    CHECK_INT_EQ(tun_ws_read(&r, buf, (size_t)n, &ev), n);
    CHECK(ev.type == TUN_WS_EV_CLOSE && ev.close_code == 4000 && ev.reason_len == 123);
    CHECK_MEM_EQ(ev.reason, reason, 123);
    CHECK(ev.reason == (const char *)buf + 8);

    CHECK_INT_EQ(tun_ws_close_write(buf, sizeof(buf), 4000, reason, 124, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_close_write(buf, sizeof(buf), 1005, NULL, 0, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_close_write(buf, sizeof(buf), 1006, NULL, 0, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_close_write(buf, sizeof(buf), 1015, NULL, 0, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_close_write(buf, sizeof(buf), 2000, NULL, 0, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_close_write(buf, sizeof(buf), 1000, "\xff", 1, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_close_write(buf, sizeof(buf), 1000, NULL, 1, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_close_write(buf, sizeof(buf), 0, "x", 1, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_close_write(buf, 3, 1000, NULL, 0, NULL), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_ws_close_write(buf, 4, 1000, NULL, 0, NULL), 4);
    CHECK_MEM_EQ(buf, "\x88\x02\x03\xe8", 4);

    int code;
    const char *rs;
    size_t rl;
    CHECK_INT_EQ(tun_ws_close_parse((const uint8_t *)"\x03\xe9ok", 4, &code, &rs, &rl), 0);
    CHECK(code == 1001 && rl == 2 && memcmp(rs, "ok", 2) == 0);
    CHECK_INT_EQ(tun_ws_close_parse((const uint8_t *)"\x03", 1, &code, &rs, &rl), TUN_EPROTO);
    CHECK_INT_EQ(tun_ws_close_parse((const uint8_t *)"\x03\xed", 2, &code, &rs, &rl), TUN_EPROTO);
    CHECK_INT_EQ(tun_ws_close_parse((const uint8_t *)"\x03\xe8\xc3", 3, &code, &rs, &rl),
                 TUN_EFORMAT);
    CHECK_INT_EQ(tun_ws_close_parse(NULL, 0, &code, &rs, &rl), 0);
    CHECK_INT_EQ(code, 1005);
    CHECK_INT_EQ(tun_ws_close_parse(NULL, 1, &code, &rs, &rl), TUN_EINVAL);
}

/* The i-th test message: its length and bytes depend only on i. Returns the length. */
static size_t gen(int i, uint8_t *out, size_t cap)
{
    uint64_t x = (uint64_t)i * 0x9E3779B97F4A7C15ull + 1;
    x ^= x >> 29;
    size_t len = (size_t)(x % (cap + 1));
    if (i % 7 == 0)
        len = 0;
    for (size_t k = 0; k < len; k++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        out[k] = (uint8_t)(x >> 56);
    }
    return len;
}

/* Many messages from the other side, each split into 1..3 fragments with pings between, read
 * with the stream revealed in uneven pieces: every message arrives intact and in order. */
static void test_round_trip(void)
{
    static uint8_t stream[1 << 20], payload[5000], expect[5000];
    for (int role = TUN_WS_CLIENT; role <= TUN_WS_SERVER; role++) {
        size_t n = 0;
        int count = 0;
        while (n < sizeof(stream) - 3 * (sizeof(payload) + 30)) {
            size_t len = gen(count, payload, sizeof(payload));
            uint8_t key[4];
            CHECK_INT_EQ(tun_ws_new_mask(key), 0);
            const uint8_t *mask = role == TUN_WS_SERVER ? key : NULL; /* a client masks */
            size_t parts = 1 + (size_t)count % 3, done = 0;
            for (size_t p = 0; p < parts; p++) {
                size_t take = p + 1 == parts ? len - done : (len - done) / 2;
                int op = p == 0 ? (count % 5 ? TUN_WS_BINARY : TUN_WS_TEXT) : TUN_WS_CONT;
                if (op == TUN_WS_TEXT) /* keep text messages ASCII */
                    for (size_t k = 0; k < len; k++)
                        payload[k] &= 0x7F;
                int w = tun_ws_frame_write(stream + n, sizeof(stream) - n, p + 1 == parts, op,
                                           payload + done, take, mask);
                CHECK(w > 0);
                n += (size_t)w;
                done += take;
                if (p == 0 && parts > 1) {
                    w = tun_ws_frame_write(stream + n, sizeof(stream) - n, 1, TUN_WS_PING, "x", 1,
                                           mask);
                    n += (size_t)w;
                }
            }
            count++;
        }
        struct tun_ws_reader r;
        tun_ws_reader_init(&r, (enum tun_ws_role)role, 0, asm_buf, sizeof(asm_buf));
        size_t off = 0, avail = 0;
        int messages = 0, pings = 0;
        while (off < n) {
            struct tun_ws_event ev;
            int rc = tun_ws_read(&r, stream + off, avail - off, &ev);
            if (rc < 0) {
                CHECK_INT_EQ(rc, 0);
                break;
            }
            if (rc == 0) {
                avail += 1 + (size_t)(avail * 2654435761u % 3000);
                if (avail > n)
                    avail = n;
                continue;
            }
            if (ev.type == TUN_WS_EV_PING)
                pings++;
            if (ev.type == TUN_WS_EV_MESSAGE) {
                size_t len = gen(messages, expect, sizeof(expect));
                if (messages % 5 == 0)
                    for (size_t k = 0; k < len; k++)
                        expect[k] &= 0x7F;
                CHECK_INT_EQ(ev.opcode, messages % 5 ? TUN_WS_BINARY : TUN_WS_TEXT);
                CHECK_INT_EQ(ev.len, len);
                if (ev.len == len && len)
                    CHECK_MEM_EQ(ev.data, expect, len);
                messages++;
            }
            off += (size_t)rc;
        }
        CHECK_INT_EQ(messages, count);
        CHECK_INT_EQ(pings, count / 3 * 2 + (count % 3 == 2 ? 1 : 0));
        CHECK_INT_EQ(off, n);
    }
}

int main(void)
{
    test_rfc_examples();
    test_zero_copy();
    test_stream();
    test_bad_frames();
    test_limits();
    test_header_codec();
    test_mask();
    test_utf8();
    test_close();
    test_round_trip();
    return TEST_DONE();
}
