/* Disco packets: seal/open, tampering, wrong recipient, strict inner decoding, the demux
 * property against QUIC and STUN, and the per-peer path state. */
#include "disco/disco.h"
#include "disco/paths.h"
#include "ice/stun.h"
#include "identity/identity.h"
#include "quic/quic.h"
#include "util/error.h"
#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static uint8_t sec_a[32], pub_a[32], sec_b[32], pub_b[32], sec_c[32], pub_c[32];
static uint8_t k_ab[32], k_ba[32], k_ac[32], k_cb[32];

static struct sockaddr_storage v4(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, ip, &a->sin_addr);
    return ss;
}

static struct sockaddr_storage v6(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, ip, &a->sin6_addr);
    return ss;
}

static int same_addr(const struct sockaddr_storage *x, const struct sockaddr_storage *y)
{
    if (x->ss_family != y->ss_family)
        return 0;
    if (x->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)x, *b = (const void *)y;
        return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *a = (const void *)x, *b = (const void *)y;
    return a->sin6_port == b->sin6_port && memcmp(&a->sin6_addr, &b->sin6_addr, 16) == 0;
}

/* Open from an exact-size heap copy so ASan sees reads past the end. */
static int open_copy(const uint8_t *pkt, size_t len, const uint8_t key[32], struct tun_disco_msg *m)
{
    uint8_t *c = malloc(len ? len : 1);
    memcpy(c, pkt, len);
    int rc = tun_disco_open(c, len, key, m);
    free(c);
    return rc;
}

static int decode_copy(const uint8_t *in, size_t len, struct tun_disco_msg *m)
{
    uint8_t *c = malloc(len ? len : 1);
    memcpy(c, in, len);
    int rc = tun_disco_decode_inner(c, len, m);
    free(c);
    return rc;
}

static void setup(void)
{
    CHECK_INT_EQ(tun_identity_generate(sec_a), 0);
    CHECK_INT_EQ(tun_identity_public(pub_a, sec_a), 0);
    CHECK_INT_EQ(tun_identity_generate(sec_b), 0);
    CHECK_INT_EQ(tun_identity_public(pub_b, sec_b), 0);
    CHECK_INT_EQ(tun_identity_generate(sec_c), 0);
    CHECK_INT_EQ(tun_identity_public(pub_c, sec_c), 0);
    CHECK_INT_EQ(tun_disco_shared_key(k_ab, sec_a, pub_b), 0);
    CHECK_INT_EQ(tun_disco_shared_key(k_ba, sec_b, pub_a), 0);
    CHECK_INT_EQ(tun_disco_shared_key(k_ac, sec_a, pub_c), 0);
    CHECK_INT_EQ(tun_disco_shared_key(k_cb, sec_c, pub_b), 0);
    /* Symmetric, and distinct per pair. */
    CHECK_MEM_EQ(k_ab, k_ba, 32);
    CHECK(memcmp(k_ab, k_ac, 32) != 0);
    CHECK(memcmp(k_ab, k_cb, 32) != 0);
}

static void test_round_trips(void)
{
    uint8_t pkt[TUN_DISCO_MAX_PACKET];
    struct tun_disco_msg m, out;

    memset(&m, 0, sizeof m);
    m.type = TUN_DISCO_PING;
    CHECK_INT_EQ(tun_disco_new_txid(m.txid), 0);
    int n = tun_disco_seal(pkt, sizeof pkt, pub_a, k_ab, &m);
    CHECK_INT_EQ(n, TUN_DISCO_OVERHEAD + 13);
    CHECK(tun_disco_is_disco(pkt, (size_t)n));
    CHECK(tun_disco_sender(pkt, (size_t)n) == pkt + 8);
    CHECK_MEM_EQ(tun_disco_sender(pkt, (size_t)n), pub_a, 32);
    CHECK_INT_EQ(open_copy(pkt, (size_t)n, k_ba, &out), 0);
    CHECK_INT_EQ(out.type, TUN_DISCO_PING);
    CHECK_MEM_EQ(out.txid, m.txid, 12);
    /* Two seals of the same message differ (fresh nonce). */
    uint8_t pkt2[TUN_DISCO_MAX_PACKET];
    CHECK_INT_EQ(tun_disco_seal(pkt2, sizeof pkt2, pub_a, k_ab, &m), n);
    CHECK(memcmp(pkt + 40, pkt2 + 40, 24) != 0);
    CHECK_INT_EQ(tun_disco_seal(pkt2, (size_t)n - 1, pub_a, k_ab, &m), TUN_ETOOBIG);

    /* PONG with IPv4, IPv6 and IPv4-mapped IPv6 (which comes back as IPv4). */
    struct sockaddr_storage addrs[3] = {v4("198.51.100.7", 41641), v6("2001:db8::1", 443),
                                        v6("::ffff:203.0.113.9", 7)};
    struct sockaddr_storage want[3] = {addrs[0], addrs[1], v4("203.0.113.9", 7)};
    int sizes[3] = {13 + 7, 13 + 19, 13 + 7};
    for (int i = 0; i < 3; i++) {
        memset(&m, 0, sizeof m);
        m.type = TUN_DISCO_PONG;
        memset(m.txid, 0x40 + i, 12);
        m.addr = addrs[i];
        n = tun_disco_seal(pkt, sizeof pkt, pub_b, k_ba, &m);
        CHECK_INT_EQ(n, TUN_DISCO_OVERHEAD + sizes[i]);
        CHECK_INT_EQ(open_copy(pkt, (size_t)n, k_ab, &out), 0);
        CHECK_INT_EQ(out.type, TUN_DISCO_PONG);
        CHECK_MEM_EQ(out.txid, m.txid, 12);
        CHECK(same_addr(&out.addr, &want[i]));
    }

    /* CALL_ME_MAYBE: empty, mixed, and the largest (16 IPv6 = TUN_DISCO_MAX_PACKET). */
    memset(&m, 0, sizeof m);
    m.type = TUN_DISCO_CALL_ME_MAYBE;
    n = tun_disco_seal(pkt, sizeof pkt, pub_a, k_ab, &m);
    CHECK_INT_EQ(n, TUN_DISCO_OVERHEAD + 2);
    CHECK_INT_EQ(open_copy(pkt, (size_t)n, k_ba, &out), 0);
    CHECK_INT_EQ(out.n_addrs, 0);
    m.n_addrs = 3;
    m.addrs[0] = addrs[0];
    m.addrs[1] = addrs[1];
    m.addrs[2] = addrs[2];
    n = tun_disco_seal(pkt, sizeof pkt, pub_a, k_ab, &m);
    CHECK_INT_EQ(open_copy(pkt, (size_t)n, k_ba, &out), 0);
    CHECK_INT_EQ(out.n_addrs, 3);
    for (int i = 0; i < 3; i++)
        CHECK(same_addr(&out.addrs[i], &want[i]));
    m.n_addrs = TUN_DISCO_MAX_ADDRS;
    for (int i = 0; i < TUN_DISCO_MAX_ADDRS; i++)
        m.addrs[i] = v6("2001:db8::2", (uint16_t)(1000 + i));
    n = tun_disco_seal(pkt, sizeof pkt, pub_a, k_ab, &m);
    CHECK_INT_EQ(n, TUN_DISCO_MAX_PACKET);
    CHECK_INT_EQ(open_copy(pkt, (size_t)n, k_ba, &out), 0);
    CHECK_INT_EQ(out.n_addrs, TUN_DISCO_MAX_ADDRS);
    CHECK(same_addr(&out.addrs[15], &m.addrs[15]));
    m.n_addrs = TUN_DISCO_MAX_ADDRS + 1;
    CHECK_INT_EQ(tun_disco_seal(pkt, sizeof pkt, pub_a, k_ab, &m), TUN_EINVAL);

    /* Encoder refusals: port 0, unknown family, unknown type. */
    memset(&m, 0, sizeof m);
    m.type = TUN_DISCO_PONG;
    m.addr = v4("192.0.2.1", 0);
    CHECK_INT_EQ(tun_disco_seal(pkt, sizeof pkt, pub_a, k_ab, &m), TUN_EINVAL);
    m.addr.ss_family = AF_UNIX;
    CHECK_INT_EQ(tun_disco_seal(pkt, sizeof pkt, pub_a, k_ab, &m), TUN_EINVAL);
    m.type = 9;
    CHECK_INT_EQ(tun_disco_seal(pkt, sizeof pkt, pub_a, k_ab, &m), TUN_EINVAL);
}

static void test_tamper_and_recipient(void)
{
    uint8_t pkt[TUN_DISCO_MAX_PACKET];
    struct tun_disco_msg m, out;
    memset(&m, 0, sizeof m);
    m.type = TUN_DISCO_PONG;
    memset(m.txid, 7, 12);
    m.addr = v4("192.0.2.44", 5000);
    int n = tun_disco_seal(pkt, sizeof pkt, pub_a, k_ab, &m);
    CHECK(n > 0);

    /* Every single-bit change anywhere is caught: magic -> not disco; sender key -> the
     * receiver picks the key of the claimed sender, which is not A's; nonce/box -> the tag. */
    int caught = 0;
    for (int i = 0; i < n; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            pkt[i] ^= (uint8_t)(1u << bit);
            const uint8_t *claimed = tun_disco_sender(pkt, (size_t)n);
            int rc;
            if (!claimed) {
                rc = TUN_EFORMAT;
            } else if (memcmp(claimed, pub_a, 32) != 0) {
                uint8_t k[32];
                rc = tun_disco_shared_key(k, sec_b, claimed);
                if (rc == 0)
                    rc = open_copy(pkt, (size_t)n, k, &out);
            } else {
                rc = open_copy(pkt, (size_t)n, k_ba, &out);
            }
            if (rc != 0)
                caught++;
            if (i < 8)
                CHECK_INT_EQ(rc, TUN_EFORMAT);
            else if (i >= 40)
                CHECK_INT_EQ(rc, TUN_ECRYPTO);
            pkt[i] ^= (uint8_t)(1u << bit);
        }
    }
    CHECK_INT_EQ(caught, n * 3);
    CHECK_INT_EQ(open_copy(pkt, (size_t)n, k_ba, &out), 0);

    /* Wrong recipient: C shares a key with A, but A's packet to B does not open with it, nor
     * with C's key for B. */
    uint8_t k_ca[32];
    CHECK_INT_EQ(tun_disco_shared_key(k_ca, sec_c, pub_a), 0);
    CHECK_INT_EQ(open_copy(pkt, (size_t)n, k_ca, &out), TUN_ECRYPTO);
    CHECK_INT_EQ(open_copy(pkt, (size_t)n, k_cb, &out), TUN_ECRYPTO);
    /* C cannot impersonate A to B: C writes A's key in the header but seals with its key. */
    int m2 = tun_disco_seal(pkt, sizeof pkt, pub_a, k_cb, &m);
    CHECK(m2 > 0);
    CHECK_INT_EQ(open_copy(pkt, (size_t)m2, k_ba, &out), TUN_ECRYPTO);

    /* Truncation and extension. */
    n = tun_disco_seal(pkt, sizeof pkt, pub_a, k_ab, &m);
    for (int len = 0; len < n; len++) {
        int rc = open_copy(pkt, (size_t)len, k_ba, &out);
        CHECK(rc == TUN_EFORMAT || rc == TUN_ELENGTH || rc == TUN_ECRYPTO);
        if (len <= TUN_DISCO_OVERHEAD)
            CHECK(!tun_disco_is_disco(pkt, (size_t)len));
    }
    static uint8_t huge[TUN_DISCO_MAX_PACKET + 1];
    memcpy(huge, pkt, (size_t)n);
    CHECK_INT_EQ(open_copy(huge, (size_t)n + 1, k_ba, &out), TUN_ECRYPTO);
    CHECK_INT_EQ(open_copy(huge, sizeof huge, k_ba, &out), TUN_ELENGTH);

    /* Keys libsodium refuses: a small-order point, a non-point. */
    uint8_t k[32], bad[32] = {1};
    CHECK_INT_EQ(tun_disco_shared_key(k, sec_a, bad), TUN_ECRYPTO);
    memset(bad, 0xFF, 32);
    CHECK_INT_EQ(tun_disco_shared_key(k, sec_a, bad), TUN_ECRYPTO);
}

static void test_inner_strict(void)
{
    struct tun_disco_msg m;
    uint8_t in[64];
    /* A valid PONG (IPv6) and every truncation of it, and one trailing byte. */
    static const uint8_t pong6[] = {2,    1,    2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 6, 0x20, 0x01,
                                    0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0,  0,  0,  1, 0x01, 0xbb};
    CHECK_INT_EQ(decode_copy(pong6, sizeof pong6, &m), 0);
    CHECK_INT_EQ(m.type, TUN_DISCO_PONG);
    CHECK_INT_EQ(m.addr.ss_family, AF_INET6);
    CHECK_INT_EQ(ntohs(((struct sockaddr_in6 *)&m.addr)->sin6_port), 443);
    for (size_t len = 0; len < sizeof pong6; len++)
        CHECK_INT_EQ(decode_copy(pong6, len, &m), TUN_ELENGTH);
    memcpy(in, pong6, sizeof pong6);
    in[sizeof pong6] = 0;
    CHECK_INT_EQ(decode_copy(in, sizeof pong6 + 1, &m), TUN_ELENGTH);
    /* Bad family, port 0, IPv4-mapped written as family 6. */
    memcpy(in, pong6, sizeof pong6);
    in[13] = 5;
    CHECK_INT_EQ(decode_copy(in, sizeof pong6, &m), TUN_EFORMAT);
    memcpy(in, pong6, sizeof pong6);
    in[30] = in[31] = 0;
    CHECK_INT_EQ(decode_copy(in, sizeof pong6, &m), TUN_EFORMAT);
    memcpy(in, pong6, sizeof pong6);
    memset(in + 14, 0, 10);
    in[24] = in[25] = 0xFF;
    CHECK_INT_EQ(decode_copy(in, sizeof pong6, &m), TUN_EFORMAT);
    /* PING: exactly 13 bytes. */
    in[0] = TUN_DISCO_PING;
    CHECK_INT_EQ(decode_copy(in, 13, &m), 0);
    CHECK_INT_EQ(decode_copy(in, 12, &m), TUN_ELENGTH);
    CHECK_INT_EQ(decode_copy(in, 14, &m), TUN_ELENGTH);
    /* CALL_ME_MAYBE: count over the limit, count larger than the addresses present. */
    static const uint8_t cmm[] = {3, 2, 4, 192, 0, 2, 1, 0x1f, 0x90, 4, 192, 0, 2, 2, 0x1f, 0x91};
    CHECK_INT_EQ(decode_copy(cmm, sizeof cmm, &m), 0);
    CHECK_INT_EQ(m.n_addrs, 2);
    CHECK_INT_EQ(ntohs(((struct sockaddr_in *)&m.addrs[1])->sin_port), 8081);
    memcpy(in, cmm, sizeof cmm);
    in[1] = 3;
    CHECK_INT_EQ(decode_copy(in, sizeof cmm, &m), TUN_ELENGTH);
    in[1] = 1;
    CHECK_INT_EQ(decode_copy(in, sizeof cmm, &m), TUN_ELENGTH);
    in[1] = TUN_DISCO_MAX_ADDRS + 1;
    CHECK_INT_EQ(decode_copy(in, sizeof cmm, &m), TUN_EFORMAT);
    /* Unknown types, including 0. */
    for (int t = 0; t < 256; t++) {
        if (t >= 1 && t <= 3)
            continue;
        in[0] = (uint8_t)t;
        CHECK_INT_EQ(decode_copy(in, sizeof cmm, &m), TUN_EPROTO);
    }
    CHECK_INT_EQ(decode_copy(in, 0, &m), TUN_ELENGTH);

    /* A box that opens but holds garbage is a decode error, not a crypto error. */
    uint8_t pkt[TUN_DISCO_MAX_PACKET];
    uint8_t inner[] = {TUN_DISCO_PING, 1, 2, 3};
    memcpy(pkt, "\x1d\x15\xc0\x01\x21\x12\xa4\x42", 8);
    memcpy(pkt + 8, pub_a, 32);
    memset(pkt + 40, 9, 24);
    CHECK_INT_EQ(crypto_box_easy_afternm(pkt + 64, inner, sizeof inner, pkt + 40, k_ab), 0);
    CHECK_INT_EQ(open_copy(pkt, 64 + 16 + sizeof inner, k_ba, &m), TUN_ELENGTH);
}

/* Every disco packet is "other" for the QUIC endpoint and never valid STUN; STUN messages are
 * never disco. */
static void test_demux(void)
{
    uint8_t pkt[TUN_DISCO_MAX_PACKET];
    struct tun_disco_msg m;
    struct tun_stun_msg sm;
    int bad = 0, count = 0;
    for (int type = TUN_DISCO_PING; type <= TUN_DISCO_CALL_ME_MAYBE; type++) {
        for (int k = 0; k <= TUN_DISCO_MAX_ADDRS; k++) {
            for (int rep = 0; rep < 20; rep++) {
                memset(&m, 0, sizeof m);
                m.type = (uint8_t)type;
                CHECK_INT_EQ(tun_disco_new_txid(m.txid), 0);
                m.addr = (rep & 1) ? v6("2001:db8::5", 9) : v4("10.0.0.1", 9);
                if (type == TUN_DISCO_CALL_ME_MAYBE) {
                    m.n_addrs = (size_t)k;
                    for (int i = 0; i < k; i++)
                        m.addrs[i] = ((i + rep) & 1) ? v6("2001:db8::6", 80) : v4("10.0.0.2", 80);
                }
                int n = tun_disco_seal(pkt, sizeof pkt, pub_a, k_ab, &m);
                if (n < 0) {
                    bad++;
                    continue;
                }
                count++;
                if (!tun_qep_is_other(pkt, (size_t)n))
                    bad++;
                if (tun_stun_parse(pkt, (size_t)n, &sm) == 0)
                    bad++;
                if (tun_stun_is_stun(pkt, (size_t)n))
                    bad++;
                if (!tun_disco_is_disco(pkt, (size_t)n))
                    bad++;
            }
        }
    }
    CHECK(count > 1000);
    CHECK_INT_EQ(bad, 0);
    /* Whatever follows the magic, the STUN parser refuses it (length 0xC001 is never a
     * multiple of 4), for every size up to the largest packet. */
    memset(pkt, 0, sizeof pkt);
    memcpy(pkt, "\x1d\x15\xc0\x01\x21\x12\xa4\x42", 8);
    for (size_t len = 8; len <= sizeof pkt; len++) {
        if (tun_stun_parse(pkt, len, &sm) == 0)
            bad++;
        if (len >= 20 && !tun_qep_is_other(pkt, len))
            bad++;
    }
    CHECK_INT_EQ(bad, 0);
    /* A real STUN binding request is not disco. */
    uint8_t stun[128], txid[12] = {1};
    int sn = tun_stun_binding_request(stun, sizeof stun, txid, NULL, 0);
    CHECK(sn > 0);
    CHECK(!tun_disco_is_disco(stun, (size_t)sn));
    CHECK(tun_disco_sender(stun, (size_t)sn) == NULL);
}

static void test_paths(void)
{
    struct tun_paths ps;
    tun_paths_init(&ps);
    struct sockaddr_storage a = v4("192.0.2.1", 1000), b = v4("192.0.2.2", 2000),
                            c = v6("2001:db8::9", 3000), z = v4("192.0.2.3", 0);
    uint64_t next = 0, t = 1000000;
    CHECK_INT_EQ(tun_paths_select(&ps, t), -1);
    CHECK_INT_EQ(tun_paths_next_ping(&ps, t, &next), -1);
    CHECK(next == UINT64_MAX);
    CHECK_INT_EQ(tun_paths_add(&ps, (struct sockaddr *)&a), 0);
    CHECK_INT_EQ(tun_paths_add(&ps, (struct sockaddr *)&b), 1);
    CHECK_INT_EQ(tun_paths_add(&ps, (struct sockaddr *)&a), 0);
    CHECK_INT_EQ(tun_paths_add(&ps, (struct sockaddr *)&z), TUN_EINVAL);
    CHECK_INT_EQ(tun_paths_add(&ps, (struct sockaddr *)&c), 2);

    /* Nothing pinged yet: each is due now, one after the other. */
    uint8_t tx[3][12];
    for (int i = 0; i < 3; i++) {
        int idx = tun_paths_next_ping(&ps, t, &next);
        CHECK_INT_EQ(idx, i);
        memset(tx[i], 0x10 + i, 12);
        CHECK_INT_EQ(tun_paths_ping_sent(&ps, idx, tx[i], t), 0);
    }
    CHECK_INT_EQ(tun_paths_next_ping(&ps, t, &next), -1);
    CHECK(next == t + TUN_PATH_PING_US);
    CHECK_INT_EQ(tun_paths_ping_sent(&ps, 3, tx[0], t), TUN_ERANGE);

    /* Pongs: wrong source or unknown txid are refused; a: 40 ms, c: 37 ms. */
    CHECK_INT_EQ(tun_paths_pong(&ps, tx[0], (struct sockaddr *)&b, t + 40000), TUN_EPROTO);
    uint8_t nope[12] = {0};
    CHECK_INT_EQ(tun_paths_pong(&ps, nope, (struct sockaddr *)&a, t + 40000), TUN_EPROTO);
    CHECK_INT_EQ(tun_paths_pong(&ps, tx[0], (struct sockaddr *)&a, t + 40000), 0);
    CHECK_INT_EQ(ps.p[0].rtt_us, 40000);
    /* A duplicate (replayed) pong is not matched again. */
    CHECK_INT_EQ(tun_paths_pong(&ps, tx[0], (struct sockaddr *)&a, t + 41000), TUN_EPROTO);
    t += 40000;
    CHECK_INT_EQ(tun_paths_select(&ps, t), 0);
    /* c answers 3 ms faster: not enough to switch. */
    CHECK_INT_EQ(tun_paths_pong(&ps, tx[2], (struct sockaddr *)&c, t - 40000 + 37000), 2);
    CHECK_INT_EQ(tun_paths_select(&ps, t), 0);

    /* Once there is a path: the best is pinged TUN_PATH_PING_US after its evidence, the others
     * every TUN_PATH_UPGRADE_US. */
    CHECK_INT_EQ(tun_paths_next_ping(&ps, t, &next), -1);
    CHECK(next == t + TUN_PATH_PING_US);
    /* QUIC acks flowing on path 0 push that ping back. */
    tun_paths_traffic(&ps, t + 3000000);
    CHECK_INT_EQ(tun_paths_next_ping(&ps, t + TUN_PATH_PING_US, &next), -1);
    CHECK(next == t + 3000000 + TUN_PATH_PING_US);

    /* b answers at 20 ms: better by >= 5 ms, switch. */
    uint64_t tb = t + 1000000;
    CHECK_INT_EQ(tun_paths_ping_sent(&ps, 1, tx[1], tb), 0);
    CHECK_INT_EQ(tun_paths_pong(&ps, tx[1], (struct sockaddr *)&b, tb + 20000), 1);
    CHECK_INT_EQ(tun_paths_select(&ps, tb + 20000), 1);
    t = tb + 20000;

    /* Probes to b are lost, but QUIC acks keep arriving on b: never downgraded. */
    for (uint64_t s = 1; s <= 60; s++) {
        uint64_t now = t + s * 1000000;
        tun_paths_traffic(&ps, now);
        int idx;
        while ((idx = tun_paths_next_ping(&ps, now, &next)) >= 0) {
            uint8_t lost[12];
            memset(lost, (int)s, 12);
            CHECK_INT_EQ(tun_paths_ping_sent(&ps, idx, lost, now), 0); /* never answered */
        }
        CHECK_INT_EQ(tun_paths_select(&ps, now), 1);
    }
    t += 60000000;
    /* Traffic stops and probes stay lost: trust lapses 6.5 s after the last evidence; a and c
     * have lapsed too, so back to the relay. */
    CHECK_INT_EQ(tun_paths_select(&ps, t + TUN_PATH_TRUST_US - 1), 1);
    CHECK_INT_EQ(tun_paths_select(&ps, t + TUN_PATH_TRUST_US), -1);
    /* On the relay every candidate is probed every TUN_PATH_PING_US. */
    uint64_t now = t + TUN_PATH_TRUST_US;
    int pinged = 0;
    int idx;
    while ((idx = tun_paths_next_ping(&ps, now + TUN_PATH_PING_US, &next)) >= 0) {
        CHECK_INT_EQ(tun_paths_ping_sent(&ps, idx, tx[idx], now + TUN_PATH_PING_US), 0);
        pinged++;
    }
    CHECK_INT_EQ(pinged, 3);
    /* c answers first: upgrade again. */
    now += TUN_PATH_PING_US;
    CHECK_INT_EQ(tun_paths_pong(&ps, tx[2], (struct sockaddr *)&c, now + 30000), 2);
    CHECK_INT_EQ(tun_paths_select(&ps, now + 30000), 2);

    /* Capacity. */
    tun_paths_init(&ps);
    for (int i = 0; i < TUN_PATHS_MAX; i++) {
        struct sockaddr_storage s = v4("198.51.100.1", (uint16_t)(100 + i));
        CHECK_INT_EQ(tun_paths_add(&ps, (struct sockaddr *)&s), i);
    }
    struct sockaddr_storage s = v4("198.51.100.1", 99);
    CHECK_INT_EQ(tun_paths_add(&ps, (struct sockaddr *)&s), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_paths_find(&ps, (struct sockaddr *)&s), TUN_ERANGE);
}

/* The example in docs/protocol.md: A (seed 01*32) sends B (seed 02*32) a PONG with a fixed
 * nonce. Pins the wire format: magic, key conversion, box layout and inner encoding. */
static void test_known_answer(void)
{
    static const uint8_t pkt[] = {
        0x1d, 0x15, 0xc0, 0x01, 0x21, 0x12, 0xa4, 0x42, 0x8a, 0x88, 0xe3, 0xdd, 0x74, 0x09, 0xf1,
        0x95, 0xfd, 0x52, 0xdb, 0x2d, 0x3c, 0xba, 0x5d, 0x72, 0xca, 0x67, 0x09, 0xbf, 0x1d, 0x94,
        0x12, 0x1b, 0xf3, 0x74, 0x88, 0x01, 0xb4, 0x0f, 0x6f, 0x5c, 0x00, 0x01, 0x02, 0x03, 0x04,
        0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13,
        0x14, 0x15, 0x16, 0x17, 0xff, 0x47, 0xd2, 0x3d, 0x42, 0x4d, 0x67, 0x2d, 0x26, 0x21, 0xf6,
        0x1f, 0x8f, 0x90, 0x0f, 0xae, 0xc1, 0xd8, 0x7c, 0x00, 0xff, 0xc5, 0x09, 0x44, 0x67, 0x0f,
        0x7a, 0xd4, 0xd5, 0xb8, 0xd7, 0xcf, 0x6b, 0xbe, 0x97, 0x65};
    uint8_t sa[32], sb[32], pa[32], pb[32], kb[32];
    memset(sa, 1, 32);
    memset(sb, 2, 32);
    CHECK_INT_EQ(tun_identity_public(pa, sa), 0);
    CHECK_INT_EQ(tun_identity_public(pb, sb), 0);
    CHECK_MEM_EQ(tun_disco_sender(pkt, sizeof pkt), pa, 32);
    CHECK_INT_EQ(tun_disco_shared_key(kb, sb, pa), 0);
    struct tun_disco_msg m;
    CHECK_INT_EQ(tun_disco_open(pkt, sizeof pkt, kb, &m), 0);
    CHECK_INT_EQ(m.type, TUN_DISCO_PONG);
    CHECK_INT_EQ(m.txid[0], 0xa0);
    CHECK_INT_EQ(m.txid[11], 0xab);
    struct sockaddr_storage want = v4("203.0.113.5", 41641);
    CHECK(same_addr(&m.addr, &want));
}

int main(void)
{
    setup();
    test_round_trips();
    test_tamper_and_recipient();
    test_inner_strict();
    test_demux();
    test_paths();
    test_known_answer();
    return TEST_DONE();
}
