/* Tests for src/discovery/dns.c: names, the writer with compression, and the strict decoder
 * against truncation, compression-pointer attacks and limits. */
#include "discovery/dns.h"
#include "util/error.h"

#include "test.h"

#include <stdint.h>
#include <string.h>

static struct tun_dns_name name_of(const char *text)
{
    struct tun_dns_name n;
    memset(&n, 0, sizeof n);
    CHECK_INT_EQ(tun_dns_name_from_text(&n, text, strlen(text)), 0);
    return n;
}

static void test_names(void)
{
    struct tun_dns_name n;
    char text[1100];

    n = name_of("_tunnel.abc");
    CHECK_INT_EQ(n.len, 1 + 7 + 1 + 3 + 1);
    CHECK_MEM_EQ(n.wire,
                 "\x07_tunnel\x03"
                 "abc\x00",
                 n.len);
    CHECK_INT_EQ(tun_dns_name_to_text(text, sizeof text, &n), 11);
    CHECK_STR_EQ(text, "_tunnel.abc");

    /* A trailing dot means the same name; "." and "" are the root. */
    struct tun_dns_name m = name_of("_TUNNEL.ABC.");
    CHECK(tun_dns_name_equal(&n, &m));
    n = name_of(".");
    CHECK_INT_EQ(n.len, 1);
    CHECK_INT_EQ(tun_dns_name_to_text(text, sizeof text, &n), 1);
    CHECK_STR_EQ(text, ".");
    m = name_of("");
    CHECK(tun_dns_name_equal(&n, &m));
    CHECK(!tun_dns_name_equal(&n, &(struct tun_dns_name){0}));

    CHECK_INT_EQ(tun_dns_name_from_text(&n, "a..b", 4), TUN_EFORMAT);
    CHECK_INT_EQ(tun_dns_name_from_text(&n, ".a", 2), TUN_EFORMAT);
    CHECK_INT_EQ(tun_dns_name_from_text(&n, "a..", 3), TUN_EFORMAT);
    CHECK_INT_EQ(tun_dns_name_from_text(&n, "..", 2), TUN_EFORMAT);
    CHECK_INT_EQ(tun_dns_name_from_text(&n, "a b", 3), TUN_EFORMAT);
    CHECK_INT_EQ(tun_dns_name_from_text(&n, "a\x01", 2), TUN_EFORMAT);

    /* Labels of 63 are fine, 64 is not. */
    char l[200];
    memset(l, 'x', 64);
    CHECK_INT_EQ(tun_dns_name_from_text(&n, l, 63), 0);
    CHECK_INT_EQ(tun_dns_name_from_text(&n, l, 64), TUN_ETOOBIG);

    /* 255 bytes of wire form is the limit: 4 labels "x*62" = 4 * 63 + 1 root = 253; plus
     * a label of 1 = 255 exactly; a label of 2 = 256. */
    char big[300];
    size_t o = 0;
    for (int i = 0; i < 4; i++) {
        memset(big + o, 'a' + i, 62);
        o += 62;
        big[o++] = '.';
    }
    big[o] = 'z';
    CHECK_INT_EQ(tun_dns_name_from_text(&n, big, o + 1), 0);
    CHECK_INT_EQ(n.len, 255);
    big[o + 1] = 'z';
    CHECK_INT_EQ(tun_dns_name_from_text(&n, big, o + 2), TUN_ETOOBIG);

    /* to_text escapes what would be ambiguous. */
    struct tun_dns_name e = {.len = 7, .wire = {5, 'a', '.', '\\', 0x07, 'b', 0}};
    CHECK_INT_EQ(tun_dns_name_to_text(text, sizeof text, &e), 10);
    CHECK_STR_EQ(text, "a\\.\\\\\\007b");
    CHECK_INT_EQ(tun_dns_name_to_text(text, 10, &e), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_dns_name_to_text(text, 11, &e), 10);
}

/* Build a message with TXT, A and AAAA records under one origin and decode it. */
static void test_write_read(void)
{
    static uint8_t buf[2048];
    struct tun_dns_writer w;
    struct tun_dns_name n1 = name_of("_tunnel.origin"), n2 = name_of("host.origin"),
                        n3 = name_of("_tunnel.origin");
    const uint8_t v4[4] = {192, 0, 2, 1};
    const uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 1};
    struct tun_dns_str strs[3] = {
        {(const uint8_t *)"v=1", 3}, {(const uint8_t *)"", 0}, {(const uint8_t *)"k=v", 3}};

    tun_dns_writer_init(&w, buf, sizeof buf, 0x1234, TUN_DNS_FLAG_QR);
    CHECK_INT_EQ(tun_dns_add_txt(&w, &n1, 30, strs, 3), 0);
    CHECK_INT_EQ(tun_dns_add_a(&w, &n2, 60, v4), 0);
    CHECK_INT_EQ(tun_dns_add_aaaa(&w, &n3, 0xFFFFFFFFu, v6), 0);
    CHECK_INT_EQ(tun_dns_add_txt(&w, &n2, 5, NULL, 0), 0);
    int len = tun_dns_finish(&w);
    /* Header 12; rr1: name 16 + 10 + rdata 9; rr2: "host" + pointer to "origin" = 7, 10 + 4;
     * rr3: pointer to the whole first name = 2, 10 + 16; rr4: pointer to "host.origin" = 2,
     * 10 + 0. */
    CHECK_INT_EQ(len, 12 + (16 + 10 + 9) + (7 + 10 + 4) + (2 + 10 + 16) + (2 + 10));
    CHECK(buf[12 + 35 + 5] == 0xC0 && buf[12 + 35 + 6] == 12 + 8); /* -> "origin" */

    static struct tun_dns_msg m;
    CHECK_INT_EQ(tun_dns_decode(&m, buf, (size_t)len), 0);
    CHECK_INT_EQ(m.id, 0x1234);
    CHECK_INT_EQ(m.flags, TUN_DNS_FLAG_QR);
    CHECK_INT_EQ(m.ancount, 4);
    CHECK_INT_EQ(m.n_rr, 4);
    CHECK_INT_EQ(m.truncated, 0);
    CHECK(tun_dns_name_equal(&m.rr[0].name, &n1));
    CHECK(tun_dns_name_equal(&m.rr[1].name, &n2));
    CHECK(tun_dns_name_equal(&m.rr[2].name, &n1));
    CHECK(tun_dns_name_equal(&m.rr[3].name, &n2));
    CHECK_INT_EQ(m.rr[0].type, TUN_DNS_TYPE_TXT);
    CHECK_INT_EQ(m.rr[0].ttl, 30);
    CHECK_INT_EQ(m.rr[0].str_count, 3);
    CHECK_INT_EQ(m.rr[0].section, TUN_DNS_ANSWER);
    CHECK_INT_EQ(m.str[m.rr[0].str_first].len, 3);
    CHECK_MEM_EQ(m.str[m.rr[0].str_first].p, "v=1", 3);
    CHECK_INT_EQ(m.str[m.rr[0].str_first + 1].len, 0);
    CHECK_MEM_EQ(m.str[m.rr[0].str_first + 2].p, "k=v", 3);
    CHECK_INT_EQ(m.rr[1].type, TUN_DNS_TYPE_A);
    CHECK_INT_EQ(m.rr[1].cls, TUN_DNS_CLASS_IN);
    CHECK_MEM_EQ(m.rr[1].rdata, v4, 4);
    CHECK_INT_EQ(m.rr[2].type, TUN_DNS_TYPE_AAAA);
    CHECK(m.rr[2].ttl == 0xFFFFFFFFu);
    CHECK_MEM_EQ(m.rr[2].rdata, v6, 16);
    CHECK_INT_EQ(m.rr[3].rdlen, 0);
    CHECK_INT_EQ(m.rr[3].str_count, 0);
    CHECK_INT_EQ(tun_dns_decode(NULL, buf, (size_t)len), 0);

    /* Every truncation fails cleanly, and so does one byte too many. */
    for (int cut = 0; cut < len; cut++)
        CHECK(tun_dns_decode(&m, buf, (size_t)cut) < 0);
    buf[len] = 0;
    CHECK_INT_EQ(tun_dns_decode(&m, buf, (size_t)len + 1), TUN_ELENGTH);

    /* A full buffer: the failed record is not half-written and the error sticks. */
    tun_dns_writer_init(&w, buf, 12 + 16 + 10 + 9 + 5, 0, 0);
    CHECK_INT_EQ(tun_dns_add_txt(&w, &n1, 30, strs, 3), 0);
    CHECK_INT_EQ(tun_dns_add_a(&w, &n2, 60, v4), TUN_ETOOBIG);
    CHECK_INT_EQ(w.len, 12 + 35);
    CHECK_INT_EQ(tun_dns_add_txt(&w, &n1, 30, NULL, 0), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_dns_finish(&w), TUN_ETOOBIG);
    tun_dns_writer_init(&w, buf, 11, 0, 0);
    CHECK_INT_EQ(tun_dns_finish(&w), TUN_ETOOBIG);
    tun_dns_writer_init(&w, buf, sizeof buf, 0, 0);
    CHECK_INT_EQ(tun_dns_add_rr(&w, NULL, 1, 0, v4, 4), TUN_EINVAL);
    tun_dns_writer_init(&w, buf, sizeof buf, 0, 0);
    CHECK_INT_EQ(tun_dns_add_rr(&w, &n1, 1, 0, NULL, 4), TUN_EINVAL);
}

static size_t header(uint8_t *b, int qd, int an, int ns, int ar)
{
    memset(b, 0, 12);
    b[5] = (uint8_t)qd;
    b[7] = (uint8_t)an;
    b[9] = (uint8_t)ns;
    b[11] = (uint8_t)ar;
    return 12;
}

/* The fixed part of a record: type, class IN, ttl 1, rdlen. */
static size_t fixed(uint8_t *b, uint16_t type, uint16_t rdlen)
{
    const uint8_t f[10] = {(uint8_t)(type >> 8),  (uint8_t)type, 0, 1, 0, 0, 0, 1,
                           (uint8_t)(rdlen >> 8), (uint8_t)rdlen};
    memcpy(b, f, 10);
    return 10;
}

static void test_sections_and_questions(void)
{
    uint8_t b[256];
    static struct tun_dns_msg m;
    size_t o = header(b, 1, 1, 1, 1);
    /* question "a." IN A */
    memcpy(b + o,
           "\x01"
           "a\x00\x00\x01\x00\x01",
           7);
    o += 7;
    /* answer: pointer to the question name, A */
    b[o++] = 0xC0;
    b[o++] = 12;
    o += fixed(b + o, TUN_DNS_TYPE_A, 4);
    memcpy(b + o, "\x01\x02\x03\x04", 4);
    o += 4;
    /* authority: root, type 2 (NS) with opaque rdata holding a pointer we do not follow */
    b[o++] = 0;
    o += fixed(b + o, 2, 2);
    b[o++] = 0xC0;
    b[o++] = 0xFF;
    /* additional: OPT */
    b[o++] = 0;
    o += fixed(b + o, 41, 0);
    CHECK_INT_EQ(tun_dns_decode(&m, b, o), 0);
    CHECK_INT_EQ(m.qdcount, 1);
    CHECK_INT_EQ(m.n_rr, 3);
    CHECK_INT_EQ(m.rr[0].section, TUN_DNS_ANSWER);
    CHECK_INT_EQ(m.rr[1].section, TUN_DNS_AUTHORITY);
    CHECK_INT_EQ(m.rr[2].section, TUN_DNS_ADDITIONAL);
    CHECK(tun_dns_name_equal(&m.rr[0].name, &(struct tun_dns_name){3, {1, 'a', 0}}));
    CHECK_INT_EQ(m.rr[1].name.len, 1);

    /* Counts that promise more than there is. */
    b[11] = 2;
    CHECK_INT_EQ(tun_dns_decode(&m, b, o), TUN_ELENGTH);
    /* A short header. */
    CHECK_INT_EQ(tun_dns_decode(&m, b, 11), TUN_ELENGTH);
    CHECK_INT_EQ(tun_dns_decode(&m, NULL, 0), TUN_ELENGTH);
}

/* One answer record whose owner name starts at offset 12 with `name` (n bytes), type A. */
static size_t one_a(uint8_t *b, const uint8_t *name, size_t n)
{
    size_t o = header(b, 0, 1, 0, 0);
    memcpy(b + o, name, n);
    o += n;
    o += fixed(b + o, TUN_DNS_TYPE_A, 4);
    memset(b + o, 9, 4);
    return o + 4;
}

static void test_pointer_attacks(void)
{
    uint8_t b[4096];
    static struct tun_dns_msg m;

    /* Pointer to itself. */
    size_t len = one_a(b, (const uint8_t *)"\xC0\x0C", 2);
    CHECK_INT_EQ(tun_dns_decode(&m, b, len), TUN_EFORMAT);
    /* Forward pointer (into its own record). */
    len = one_a(b, (const uint8_t *)"\xC0\x0E", 2);
    CHECK_INT_EQ(tun_dns_decode(&m, b, len), TUN_EFORMAT);
    /* Out of range pointer. */
    len = one_a(b, (const uint8_t *)"\xFF\xFF", 2);
    CHECK_INT_EQ(tun_dns_decode(&m, b, len), TUN_EFORMAT);
    /* Pointer split by the end of the message. */
    size_t o = header(b, 0, 1, 0, 0);
    b[o++] = 0xC0;
    CHECK_INT_EQ(tun_dns_decode(&m, b, o), TUN_ELENGTH);
    /* Label in progress then a pointer back into that same label run: "\x01a" at 12, then a
     * pointer to 12 -- it points before the pointer but not before the run's start. */
    len = one_a(b,
                (const uint8_t *)"\x01"
                                 "a\xC0\x0C",
                4);
    CHECK_INT_EQ(tun_dns_decode(&m, b, len), TUN_EFORMAT);
    /* A record whose name points forward to the next record's name, which points back. */
    o = header(b, 0, 2, 0, 0);
    memcpy(b + o, "\x01x\xC0\x1E", 4); /* -> 30, where the second record's name is */
    o += 4;
    o += fixed(b + o, TUN_DNS_TYPE_A, 4);
    memset(b + o, 1, 4);
    o += 4;
    CHECK_INT_EQ(o, 30);
    b[o++] = 0xC0;
    b[o++] = 12;
    o += fixed(b + o, TUN_DNS_TYPE_A, 4);
    memset(b + o, 1, 4);
    o += 4;
    CHECK_INT_EQ(tun_dns_decode(&m, b, o), TUN_EFORMAT);
    /* The loop that "pointers must go backwards" alone would allow: labels at 12 and 14, then
     * at 16 a pointer back to 14 -- before the pointer, but inside the run it interrupts. */
    len = one_a(b,
                (const uint8_t *)"\x01"
                                 "a\x01"
                                 "b\xC0\x0E",
                6);
    CHECK_INT_EQ(tun_dns_decode(&m, b, len), TUN_EFORMAT);

    /* Reserved label types. */
    len = one_a(b, (const uint8_t *)"\x41", 1);
    CHECK_INT_EQ(tun_dns_decode(&m, b, len), TUN_EFORMAT);
    len = one_a(b, (const uint8_t *)"\x80", 1);
    CHECK_INT_EQ(tun_dns_decode(&m, b, len), TUN_EFORMAT);

    /* A long valid chain: at 12 the root name of record 1, then records whose names are each a
     * pointer to the previous record's name. Each pointer goes back, so all decode. */
    o = header(b, 0, 200, 0, 0);
    size_t prev = o;
    b[o++] = 0;
    o += fixed(b + o, 99, 0);
    for (int i = 1; i < 200; i++) {
        size_t here = o;
        b[o++] = (uint8_t)(0xC0 | prev >> 8);
        b[o++] = (uint8_t)prev;
        o += fixed(b + o, 99, 0);
        prev = here;
    }
    CHECK_INT_EQ(tun_dns_decode(&m, b, o), 0);
    CHECK_INT_EQ(m.n_rr, TUN_DNS_MAX_RR);
    CHECK_INT_EQ(m.truncated, 1);
    CHECK_INT_EQ(m.rr[TUN_DNS_MAX_RR - 1].name.len, 1);

    /* A name over 255 bytes assembled from pointers: four 63-byte labels (4 * 64 = 256 bytes
     * plus the root) spread over records and joined by pointers. */
    o = header(b, 0, 4, 0, 0);
    size_t at[4];
    for (int i = 0; i < 4; i++) {
        at[i] = o;
        b[o++] = 63;
        memset(b + o, 'a' + i, 63);
        o += 63;
        if (i == 0) {
            b[o++] = 0;
        } else {
            b[o++] = (uint8_t)(0xC0 | at[i - 1] >> 8);
            b[o++] = (uint8_t)at[i - 1];
        }
        o += fixed(b + o, 99, 0);
    }
    CHECK_INT_EQ(tun_dns_decode(&m, b, o), TUN_EFORMAT);
    /* With three such labels (3 * 64 + 1 = 193 bytes) the same layout is fine. */
    b[7] = 3;
    CHECK_INT_EQ(tun_dns_decode(&m, b, at[3]), 0);
    CHECK_INT_EQ(m.rr[2].name.len, 193);
}

static void test_rdata_rules(void)
{
    uint8_t b[512];
    static struct tun_dns_msg m;
    size_t o = header(b, 0, 1, 0, 0);
    b[o++] = 0;
    o += fixed(b + o, TUN_DNS_TYPE_A, 5);
    memset(b + o, 0, 5);
    CHECK_INT_EQ(tun_dns_decode(&m, b, o + 5), TUN_EFORMAT);
    o = header(b, 0, 1, 0, 0);
    b[o++] = 0;
    o += fixed(b + o, TUN_DNS_TYPE_AAAA, 4);
    CHECK_INT_EQ(tun_dns_decode(&m, b, o + 4), TUN_EFORMAT);

    /* TXT whose string claims more than the rdata holds, though the message has more. */
    o = header(b, 0, 1, 0, 0);
    b[o++] = 0;
    o += fixed(b + o, TUN_DNS_TYPE_TXT, 3);
    memcpy(b + o,
           "\x05"
           "abcde",
           6);
    CHECK_INT_EQ(tun_dns_decode(&m, b, o + 3), TUN_EFORMAT);
    /* rdlen past the end. */
    o = header(b, 0, 1, 0, 0);
    b[o++] = 0;
    o += fixed(b + o, TUN_DNS_TYPE_TXT, 30);
    memcpy(b + o,
           "\x02"
           "ab",
           3);
    CHECK_INT_EQ(tun_dns_decode(&m, b, o + 3), TUN_ELENGTH);

    /* More strings than the table holds: counted as truncated, not an error. */
    o = header(b, 0, 1, 0, 0);
    b[o++] = 0;
    o += fixed(b + o, TUN_DNS_TYPE_TXT, 100);
    for (int i = 0; i < 100; i++)
        b[o++] = 0;
    CHECK_INT_EQ(tun_dns_decode(&m, b, o), 0);
    CHECK_INT_EQ(m.n_str, TUN_DNS_MAX_STR);
    CHECK_INT_EQ(m.rr[0].str_count, TUN_DNS_MAX_STR);
    CHECK_INT_EQ(m.truncated, 1);
}

int main(void)
{
    test_names();
    test_write_read();
    test_sections_and_questions();
    test_pointer_attacks();
    test_rdata_rules();
    return TEST_DONE();
}
