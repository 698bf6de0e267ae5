/* The tunnel/1 message codec: round trips, incremental decoding, limits, sources, varints. */
#include "proto/msg.h"
#include "util/error.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

static void test_roundtrip_bytewise(void)
{
    uint8_t buf[64];
    int n = tun_msg_encode(TUN_MSG_OPEN, "tcp://127.0.0.1:22", 18, buf, sizeof(buf));
    CHECK_INT_EQ(n, 21);
    CHECK_INT_EQ(buf[0], 0x10);
    CHECK_INT_EQ(buf[1], 0);
    CHECK_INT_EQ(buf[2], 18);
    /* Fed one byte at a time, the message comes out whole exactly once. */
    struct tun_msg_reader r;
    tun_msg_reader_init(&r, 0);
    int got = 0;
    for (int i = 0; i < n; i++) {
        const uint8_t *p = buf + i;
        size_t len = 1;
        struct tun_msg m;
        int rc = tun_msg_read(&r, &p, &len, &m);
        if (rc == 1) {
            got++;
            CHECK_INT_EQ(m.type, TUN_MSG_OPEN);
            CHECK_INT_EQ(m.len, 18);
            CHECK(memcmp(m.body, "tcp://127.0.0.1:22", 18) == 0);
            CHECK_INT_EQ(i, n - 1);
        } else {
            CHECK_INT_EQ(rc, 0);
        }
    }
    CHECK_INT_EQ(got, 1);
    tun_msg_reader_free(&r);
}

static void test_two_in_one_read(void)
{
    uint8_t buf[64];
    int a = tun_msg_encode(TUN_MSG_AUTH_OK, "\x01", 1, buf, sizeof(buf));
    int b = tun_msg_encode(TUN_MSG_OPEN_OK, NULL, 0, buf + a, sizeof(buf) - (size_t)a);
    struct tun_msg_reader r;
    tun_msg_reader_init(&r, 0);
    const uint8_t *p = buf;
    size_t len = (size_t)(a + b);
    struct tun_msg m;
    CHECK_INT_EQ(tun_msg_read(&r, &p, &len, &m), 1);
    CHECK_INT_EQ(m.type, TUN_MSG_AUTH_OK);
    CHECK_INT_EQ(len, (size_t)b);
    CHECK_INT_EQ(tun_msg_read(&r, &p, &len, &m), 1);
    CHECK_INT_EQ(m.type, TUN_MSG_OPEN_OK);
    CHECK_INT_EQ(m.len, 0);
    CHECK_INT_EQ(len, 0);
    tun_msg_reader_free(&r);
}

static void test_limits(void)
{
    struct tun_msg_reader r;
    struct tun_msg m;
    const uint8_t bad_type[] = {0x7f, 0, 0};
    const uint8_t *p = bad_type;
    size_t len = sizeof(bad_type);
    tun_msg_reader_init(&r, 0);
    CHECK_INT_EQ(tun_msg_read(&r, &p, &len, &m), TUN_EPROTO);
    tun_msg_reader_free(&r);

    /* A control message over 1024 bytes is refused from its header alone. */
    const uint8_t big_ctl[] = {TUN_MSG_OPEN, 0x04, 0x01};
    p = big_ctl;
    len = sizeof(big_ctl);
    tun_msg_reader_init(&r, 0);
    CHECK_INT_EQ(tun_msg_read(&r, &p, &len, &m), TUN_ETOOBIG);
    tun_msg_reader_free(&r);

    /* UDP_DATA may be large where the stream allows it. */
    uint8_t *big = malloc(3 + 65535);
    CHECK_INT_EQ(tun_msg_encode(TUN_MSG_UDP_DATA, big + 3, 0, big, 3), 3);
    big[0] = TUN_MSG_UDP_DATA;
    big[1] = 0xff;
    big[2] = 0xff;
    memset(big + 3, 0xab, 65535);
    p = big;
    len = 3 + 65535;
    tun_msg_reader_init(&r, TUN_MSG_MAX_BODY);
    CHECK_INT_EQ(tun_msg_read(&r, &p, &len, &m), 1);
    CHECK_INT_EQ(m.len, 65535);
    tun_msg_reader_free(&r);
    free(big);

    uint8_t small[4];
    CHECK_INT_EQ(tun_msg_encode(TUN_MSG_OPEN, "abcd", 4, small, sizeof(small)), TUN_ETOOBIG);
}

static void test_sources(void)
{
    char host[256];
    uint16_t port;
    int udp;
#define SRC(s) (const uint8_t *)(s), strlen(s)
    CHECK_INT_EQ(tun_msg_parse_source(SRC("tcp://127.0.0.1:22"), &udp, host, sizeof(host), &port),
                 0);
    CHECK_INT_EQ(udp, 0);
    CHECK_STR_EQ(host, "127.0.0.1");
    CHECK_INT_EQ(port, 22);
    CHECK_INT_EQ(tun_msg_parse_source(SRC("udp://[::1]:51820"), &udp, host, sizeof(host), &port),
                 0);
    CHECK_INT_EQ(udp, 1);
    CHECK_STR_EQ(host, "::1");
    CHECK_INT_EQ(port, 51820);
    CHECK_INT_EQ(
        tun_msg_parse_source(SRC("tcp://db.example:5432"), &udp, host, sizeof(host), &port), 0);
    CHECK_STR_EQ(host, "db.example");
    const char *bad[] = {"http://a:1", "tcp://a",      "tcp://:1",    "tcp://a:0", "tcp://a:65536",
                         "tcp://a:1x", "tcp://[::1:1", "tcp://a b:1", "tcp://a:",  "udp://[::1]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK_INT_EQ(tun_msg_parse_source(SRC(bad[i]), &udp, host, sizeof(host), &port),
                     TUN_EFORMAT);
}

static void test_varint(void)
{
    const uint64_t vals[] = {0,     63,         64,         16383,
                             16384, 1073741823, 1073741824, 4611686018427387903ull};
    const size_t lens[] = {1, 1, 2, 2, 4, 4, 8, 8};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        uint8_t b[8];
        size_t n = tun_varint_encode(vals[i], b);
        CHECK_INT_EQ(n, lens[i]);
        uint64_t v = 0;
        CHECK_INT_EQ(tun_varint_decode(b, n, &v), n);
        CHECK(v == vals[i]);
        CHECK_INT_EQ(tun_varint_decode(b, n - 1, &v), 0);
    }
    /* RFC 9000 A.1 example: 0x7bbd decodes to 15293. */
    const uint8_t ex[] = {0x7b, 0xbd};
    uint64_t v;
    CHECK_INT_EQ(tun_varint_decode(ex, 2, &v), 2);
    CHECK_INT_EQ(v, 15293);
}

int main(void)
{
    test_roundtrip_bytewise();
    test_two_in_one_read();
    test_limits();
    test_sources();
    test_varint();
    return TEST_DONE();
}
