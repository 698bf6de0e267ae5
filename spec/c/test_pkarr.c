/* Tests for src/util/zbase32.c and src/discovery/pkarr*.c: keys, signed packets (with the
 * BEP-44 and pkarr test vectors), our TXT record, the relay store and the client cache. */
#include "discovery/dns.h"
#include "discovery/pkarr.h"
#include "identity/identity.h"
#include "util/error.h"
#include "util/zbase32.h"

#include "test.h"

#include <arpa/inet.h>
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SEC 1000000ull
static const uint64_t NOW = 1790000000ull * SEC; /* some time in 2026, in microseconds */

static void unhex(uint8_t *out, const char *hex)
{
    for (size_t i = 0; hex[2 * i]; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

static void test_zbase32(void)
{
    /* From pubky/pkarr, pkarr/src/types/keys.rs, test `from_string`. */
    static const uint8_t key[32] = {1,   180, 103, 163, 183, 145, 58,  178, 122, 4,  168,
                                    237, 242, 243, 251, 7,   76,  254, 14,  207, 75, 171,
                                    225, 8,   214, 123, 227, 133, 59,  15,  38,  197};
    const char *z = "yg4gxe7z1r7mr6orids9fh95y7gxhdsxjqi6nngsxxtakqaxr5no";
    char out[80];
    uint8_t back[40];
    CHECK_INT_EQ(tun_zbase32_encode(out, sizeof out, key, 32), 52);
    CHECK_STR_EQ(out, z);
    CHECK_INT_EQ(tun_zbase32_decode(back, sizeof back, z, 52, NULL), 32);
    CHECK_MEM_EQ(back, key, 32);
    CHECK_INT_EQ(tun_pkarr_key_format(out, key), 52);
    CHECK_STR_EQ(out, z);

    /* Small known values: 0x00 -> "yy", 0xff -> "9h" (11111 111 + 00 padding = 31, 28). */
    CHECK_INT_EQ(tun_zbase32_encode(out, sizeof out, (const uint8_t *)"\x00", 1), 2);
    CHECK_STR_EQ(out, "yy");
    CHECK_INT_EQ(tun_zbase32_encode(out, sizeof out, (const uint8_t *)"\xff", 1), 2);
    CHECK_STR_EQ(out, "9h");

    /* Round trips at every length, upper case accepted. */
    uint8_t in[40];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (uint8_t)(i * 37 + 11);
    for (size_t n = 0; n <= sizeof in; n++) {
        int len = tun_zbase32_encode(out, sizeof out, in, n);
        CHECK_INT_EQ(len, (int)tun_zbase32_encoded_len(n));
        memset(back, 0, sizeof back);
        CHECK_INT_EQ(tun_zbase32_decode(back, sizeof back, out, (size_t)len, NULL), (int)n);
        CHECK(n == 0 || memcmp(back, in, n) == 0);
        for (int i = 0; i < len; i++)
            if (out[i] >= 'a' && out[i] <= 'z')
                out[i] = (char)(out[i] - 32);
        CHECK_INT_EQ(tun_zbase32_decode(back, sizeof back, out, (size_t)len, NULL), (int)n);
    }

    size_t bad = 99;
    /* '2', 'l', 'v' and '0' are not in the alphabet. */
    CHECK_INT_EQ(tun_zbase32_decode(back, sizeof back, "yy2y", 4, &bad), TUN_EFORMAT);
    CHECK_INT_EQ(bad, 2);
    CHECK_INT_EQ(tun_zbase32_decode(back, sizeof back, "ly", 2, NULL), TUN_EFORMAT);
    CHECK_INT_EQ(tun_zbase32_decode(back, sizeof back, "yv", 2, NULL), TUN_EFORMAT);
    CHECK_INT_EQ(tun_zbase32_decode(back, sizeof back, "y=", 2, NULL), TUN_EFORMAT);
    CHECK_INT_EQ(tun_zbase32_decode(back, sizeof back, "yyy", 3, NULL), TUN_ELENGTH);
    /* "yb": the last character has a bit set past the 8 encoded bits. */
    CHECK_INT_EQ(tun_zbase32_decode(back, sizeof back, "yb", 2, &bad), TUN_ERANGE);
    CHECK_INT_EQ(bad, 1);
    CHECK_INT_EQ(tun_zbase32_decode(back, 31, z, 52, NULL), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_zbase32_encode(out, 52, key, 32), TUN_ETOOBIG);
}

static void test_keys(void)
{
    uint8_t key[32], want[32];
    const char *z = "yg4gxe7z1r7mr6orids9fh95y7gxhdsxjqi6nngsxxtakqaxr5no";
    tun_zbase32_decode(want, sizeof want, z, 52, NULL);
    CHECK_INT_EQ(tun_pkarr_key_parse(key, z, 52), 0);
    CHECK_MEM_EQ(key, want, 32);
    memset(key, 0, sizeof key);
    CHECK_INT_EQ(
        tun_pkarr_key_parse(key, "pk:yg4gxe7z1r7mr6orids9fh95y7gxhdsxjqi6nngsxxtakqaxr5no", 55), 0);
    CHECK_MEM_EQ(key, want, 32);
    CHECK_INT_EQ(tun_pkarr_key_parse(key, z, 51), TUN_ELENGTH);
    CHECK_INT_EQ(tun_pkarr_key_parse(key, "pk:", 3), TUN_ELENGTH);
    CHECK_INT_EQ(
        tun_pkarr_key_parse(key, "0g4gxe7z1r7mr6orids9fh95y7gxhdsxjqi6nngsxxtakqaxr5no", 52),
        TUN_EFORMAT);
    /* Not canonical: the last character carries a set padding bit. */
    CHECK_INT_EQ(
        tun_pkarr_key_parse(key, "yg4gxe7z1r7mr6orids9fh95y7gxhdsxjqi6nngsxxtakqaxr5nb", 52),
        TUN_EFORMAT);
    /* From pubky/pkarr keys.rs, test `invalid_key`: pkarr rejects it as not a curve point.
     * Its last character also carries set padding bits, which pkarr's z32 decoder ignores
     * but ours refuses first. */
    memset(key, 0x55, sizeof key);
    CHECK_INT_EQ(
        tun_pkarr_key_parse(key, "c1bkg8tfsyy8wcedtmw4fwhdmm7bbzhgg3z58tf43m5ow8w9mbus", 52),
        TUN_EFORMAT);
    /* Canonical text of 32 zero bytes: a point of small order, never a real key. */
    CHECK_INT_EQ(
        tun_pkarr_key_parse(key, "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy", 52),
        TUN_ECRYPTO);
    CHECK(key[0] == 0x55);
}

/* A DNS answer packet with one TXT record "<label>.<z32 of key>" holding `text`. */
static int txt_packet(uint8_t *out, size_t cap, const uint8_t key[32], const char *label,
                      const char *const *texts, size_t n, uint32_t ttl)
{
    char z[53], name[128];
    struct tun_dns_name dn;
    struct tun_dns_str strs[16];
    tun_pkarr_key_format(z, key);
    snprintf(name, sizeof name, "%s.%s", label, z);
    if (tun_dns_name_from_text(&dn, name, strlen(name)) != 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        strs[i] = (struct tun_dns_str){(const uint8_t *)texts[i], (uint8_t)strlen(texts[i])};
    struct tun_dns_writer w;
    tun_dns_writer_init(&w, out, cap, 0, TUN_DNS_FLAG_QR);
    tun_dns_add_txt(&w, &dn, ttl, strs, n);
    return tun_dns_finish(&w);
}

static void test_vectors(void)
{
    /* BEP-44 (bittorrent.org/beps/bep_0044.html), "test vector 1: mutable, no salt": the
     * buffer "3:seqi1e1:v12:Hello World!" is what pkarr signs for timestamp 1 and the 12-byte
     * "DNS packet" "Hello World!". The same vector is checked by libtorrent's test_dht.cpp. */
    uint8_t pk[32], sig[64], buf[200];
    unhex(pk, "77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548");
    unhex(sig, "305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff"
               "1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01");
    int n = tun_pkarr_signable(buf, sizeof buf, 1, (const uint8_t *)"Hello World!", 12);
    CHECK_INT_EQ(n, 26);
    CHECK_MEM_EQ(buf, "3:seqi1e1:v12:Hello World!", 26);
    CHECK(sodium_init() >= 0);
    CHECK_INT_EQ(crypto_sign_verify_detached(sig, buf, (size_t)n, pk), 0);

    /* As a packet: the signature passes, then the DNS check fails (it is not DNS). That the
     * error is TUN_EFORMAT and not TUN_ECRYPTO shows the signable matches the vector. */
    uint8_t pkt[200];
    memcpy(pkt, pk, 32);
    memcpy(pkt + 32, sig, 64);
    memcpy(pkt + 96, "\0\0\0\0\0\0\0\x01", 8);
    memcpy(pkt + 104, "Hello World!", 12);
    CHECK_INT_EQ(tun_pkarr_verify(NULL, pkt, 116), TUN_EFORMAT);
    pkt[50] ^= 1;
    CHECK_INT_EQ(tun_pkarr_verify(NULL, pkt, 116), TUN_ECRYPTO);

    /* pkarr keys.rs, test `certificate`: the all-zero seed has this public key. */
    static const uint8_t zero_pub[32] = {59,  106, 39,  188, 206, 182, 164, 45, 98,  163, 168,
                                         208, 42,  111, 13,  115, 101, 50,  21, 119, 29,  226,
                                         67,  166, 58,  192, 72,  161, 139, 89, 218, 41};
    uint8_t seed[32] = {0}, dns[200];
    const char *t[] = {"hello"};
    int dl = txt_packet(dns, sizeof dns, zero_pub, "_foo", t, 1, 30);
    CHECK(dl > 0);
    n = tun_pkarr_sign(pkt, sizeof pkt, seed, 42, dns, (size_t)dl);
    CHECK_INT_EQ(n, 104 + dl);
    CHECK_MEM_EQ(pkt, zero_pub, 32);
}

static void test_sign_verify(void)
{
    uint8_t secret[32], pub[32], dns[1100], pkt[1200], copy[1200], back[1200];
    const char *t[] = {"v=1", "relay=https://relay.example/"};
    struct tun_pkarr_packet p;
    CHECK_INT_EQ(tun_identity_generate(secret), 0);
    CHECK_INT_EQ(tun_identity_public(pub, secret), 0);
    int dl = txt_packet(dns, sizeof dns, pub, "_tunnel", t, 2, 30);
    CHECK(dl > 0);
    uint64_t ts = NOW + 123;
    int n = tun_pkarr_sign(pkt, sizeof pkt, secret, ts, dns, (size_t)dl);
    CHECK_INT_EQ(n, 104 + dl);
    CHECK_INT_EQ(tun_pkarr_verify(&p, pkt, (size_t)n), 0);
    CHECK_MEM_EQ(p.key, pub, 32);
    CHECK(p.timestamp == ts);
    CHECK(p.dns == pkt + 104);
    CHECK_INT_EQ(p.dns_len, dl);
    CHECK_MEM_EQ(p.dns, dns, (size_t)dl);
    /* Big-endian microseconds at 96..103. */
    for (int i = 0; i < 8; i++)
        CHECK_INT_EQ(pkt[96 + i], (uint8_t)(ts >> (56 - 8 * i)));

    /* Changing any bit of any byte is detected. */
    int undetected = 0;
    for (int i = 0; i < n; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            memcpy(copy, pkt, (size_t)n);
            copy[i] ^= (uint8_t)(1u << bit);
            if (tun_pkarr_verify(NULL, copy, (size_t)n) == 0)
                undetected++;
        }
    }
    CHECK_INT_EQ(undetected, 0);
    /* So is a shorter or longer packet, and another key or timestamp. */
    CHECK_INT_EQ(tun_pkarr_verify(NULL, pkt, (size_t)n - 1), TUN_ECRYPTO);
    memcpy(copy, pkt, (size_t)n);
    copy[n] = 0;
    CHECK_INT_EQ(tun_pkarr_verify(NULL, copy, (size_t)n + 1), TUN_ECRYPTO);

    /* Relay payload: the packet without the key, and back. */
    CHECK_INT_EQ(tun_pkarr_from_payload(back, sizeof back, pub, pkt + 32, (size_t)n - 32), n);
    CHECK_MEM_EQ(back, pkt, (size_t)n);
    CHECK_INT_EQ(tun_pkarr_from_payload(back, sizeof back, pub, pkt + 32, 71), TUN_ELENGTH);
    CHECK_INT_EQ(tun_pkarr_from_payload(back, (size_t)n - 1, pub, pkt + 32, (size_t)n - 32),
                 TUN_ETOOBIG);
    static uint8_t huge[1100];
    CHECK_INT_EQ(tun_pkarr_from_payload(back, sizeof back, pub, huge, 1073), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_pkarr_from_payload(back, sizeof back, pub, huge, 72), 104);

    /* Size limits: exactly 1000 bytes of DNS is fine, 1001 is not. One TXT record of
     * 12 + name + 10 + rdata; pad the rdata with strings to hit the size. */
    char z[53];
    tun_pkarr_key_format(z, pub);
    struct tun_dns_name dn;
    CHECK_INT_EQ(tun_dns_name_from_text(&dn, z, 52), 0);
    size_t overhead = 12 + dn.len + 10; /* 12 + 54 + 10 = 76 */
    static uint8_t fill[255];
    memset(fill, 'x', sizeof fill);
    for (size_t target = 1000; target <= 1001; target++) {
        size_t rd = target - overhead; /* 924 or 925 = 3 * 256 + rest */
        struct tun_dns_str strs[4];
        size_t ns = 0;
        while (rd > 0) {
            size_t take = rd > 256 ? 256 : rd;
            strs[ns++] = (struct tun_dns_str){fill, (uint8_t)(take - 1)};
            rd -= take;
        }
        struct tun_dns_writer w;
        tun_dns_writer_init(&w, dns, sizeof dns, 0, TUN_DNS_FLAG_QR);
        tun_dns_add_txt(&w, &dn, 1, strs, ns);
        CHECK_INT_EQ(tun_dns_finish(&w), (int)target);
        n = tun_pkarr_sign(pkt, sizeof pkt, secret, ts, dns, target);
        if (target == 1000) {
            CHECK_INT_EQ(n, 1104);
            CHECK_INT_EQ(tun_pkarr_verify(NULL, pkt, 1104), 0);
        } else {
            CHECK_INT_EQ(n, TUN_ETOOBIG);
        }
    }
    memset(copy, 0, sizeof copy);
    CHECK_INT_EQ(tun_pkarr_verify(NULL, copy, 1105), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_pkarr_verify(NULL, copy, 103), TUN_ELENGTH);
    CHECK_INT_EQ(tun_pkarr_verify(NULL, NULL, 0), TUN_ELENGTH);
    CHECK_INT_EQ(tun_pkarr_sign(pkt, 103 + (size_t)dl, secret, ts, dns, (size_t)dl), TUN_ETOOBIG);

    /* sign refuses DNS that does not parse; a packet signed anyway fails as TUN_EFORMAT. */
    memcpy(dns, "\0\0\0\0\0\0\0\x01\0\0\0\0", 12); /* promises one answer */
    CHECK_INT_EQ(tun_pkarr_sign(pkt, sizeof pkt, secret, ts, dns, 12), TUN_EFORMAT);
    uint8_t sb[1100], sk[64], pk2[32];
    int sl = tun_pkarr_signable(sb, sizeof sb, ts, dns, 12);
    CHECK(crypto_sign_seed_keypair(pk2, sk, secret) == 0);
    memcpy(pkt, pk2, 32);
    CHECK(crypto_sign_detached(pkt + 32, NULL, sb, (size_t)sl, sk) == 0);
    for (int i = 0; i < 8; i++)
        pkt[96 + i] = (uint8_t)(ts >> (56 - 8 * i));
    memcpy(pkt + 104, dns, 12);
    CHECK_INT_EQ(tun_pkarr_verify(NULL, pkt, 116), TUN_EFORMAT);
    sodium_memzero(sk, sizeof sk);
}

static void set4(struct sockaddr_storage *ss, const char *ip, int port)
{
    struct sockaddr_in *a = (void *)ss;
    memset(ss, 0, sizeof *ss);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    CHECK(inet_pton(AF_INET, ip, &a->sin_addr) == 1);
}

static void set6(struct sockaddr_storage *ss, const char *ip, int port)
{
    struct sockaddr_in6 *a = (void *)ss;
    memset(ss, 0, sizeof *ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    CHECK(inet_pton(AF_INET6, ip, &a->sin6_addr) == 1);
}

static int has_addr(const struct tun_pkarr_record *r, const struct sockaddr_storage *ss)
{
    for (size_t i = 0; i < r->n_addrs; i++) {
        if (r->addrs[i].ss_family != ss->ss_family)
            continue;
        size_t len =
            ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
        if (memcmp(&r->addrs[i], ss, len) == 0)
            return 1;
    }
    return 0;
}

static void test_record(void)
{
    static struct tun_pkarr_record r, d;
    uint8_t secret[32], pub[32], dns[1000], pkt[1200];
    CHECK_INT_EQ(tun_identity_generate(secret), 0);
    CHECK_INT_EQ(tun_identity_public(pub, secret), 0);

    memset(&r, 0, sizeof r);
    r.ttl = 30;
    r.n_relays = 2;
    strcpy(r.relays[0], "https://relay.example.org/");
    strcpy(r.relays[1], "http://10.0.0.1:3340");
    r.n_addrs = 3;
    set4(&r.addrs[0], "192.0.2.7", 41641);
    set6(&r.addrs[1], "2001:db8::1", 7842);
    set4(&r.addrs[2], "198.51.100.1", 1);
    int n = tun_pkarr_record_encode(dns, sizeof dns, pub, &r);
    CHECK(n > 0);

    /* The strings, in order, in one TXT record named _tunnel.<z32>. */
    static struct tun_dns_msg m;
    CHECK_INT_EQ(tun_dns_decode(&m, dns, (size_t)n), 0);
    CHECK_INT_EQ(m.n_rr, 1);
    CHECK_INT_EQ(m.rr[0].str_count, 4);
    char z[53], name[80], text[300];
    tun_pkarr_key_format(z, pub);
    snprintf(name, sizeof name, "_tunnel.%s", z);
    CHECK_INT_EQ(tun_dns_name_to_text(text, sizeof text, &m.rr[0].name), (int)strlen(name));
    CHECK_STR_EQ(text, name);
    const char *want[] = {"v=1", "relay=https://relay.example.org/", "relay=http://10.0.0.1:3340",
                          "addr=192.0.2.7:41641 [2001:db8::1]:7842 198.51.100.1:1"};
    for (int i = 0; i < 4; i++) {
        const struct tun_dns_str *s = &m.str[m.rr[0].str_first + i];
        CHECK_INT_EQ(s->len, strlen(want[i]));
        CHECK(memcmp(s->p, want[i], s->len) == 0);
    }

    CHECK_INT_EQ(tun_pkarr_record_decode(&d, pub, dns, (size_t)n), 0);
    CHECK_INT_EQ(d.ttl, 30);
    CHECK_INT_EQ(d.n_relays, 2);
    CHECK_STR_EQ(d.relays[0], r.relays[0]);
    CHECK_STR_EQ(d.relays[1], r.relays[1]);
    CHECK_INT_EQ(d.n_addrs, 3);
    for (int i = 0; i < 3; i++)
        CHECK(has_addr(&d, &r.addrs[i]));

    /* Another key's name does not count. */
    uint8_t other[32];
    memcpy(other, pub, 32);
    other[0] ^= 1;
    CHECK_INT_EQ(tun_pkarr_record_decode(&d, other, dns, (size_t)n), TUN_EPROTO);
    CHECK_INT_EQ(tun_pkarr_record_decode(&d, pub, dns, (size_t)n - 1), TUN_EFORMAT);

    /* publish + read_payload: what the server and the client do. */
    n = tun_pkarr_publish(pkt, sizeof pkt, secret, NOW, &r);
    CHECK(n > 104);
    uint64_t ts = 0;
    CHECK_INT_EQ(tun_pkarr_read_payload(&d, &ts, pub, pkt + 32, (size_t)n - 32), 0);
    CHECK(ts == NOW);
    CHECK_INT_EQ(d.n_relays, 2);
    CHECK_INT_EQ(d.n_addrs, 3);
    CHECK_INT_EQ(tun_pkarr_read_payload(&d, &ts, other, pkt + 32, (size_t)n - 32), TUN_ECRYPTO);

    /* Many IPv6 addresses are split over several addr= strings of at most 255 bytes. */
    r.n_relays = 0;
    r.n_addrs = TUN_PKARR_MAX_ADDRS;
    for (int i = 0; i < TUN_PKARR_MAX_ADDRS; i++) {
        char ip[64];
        snprintf(ip, sizeof ip, "2001:db8:aaaa:bbbb:cccc:dddd:eeee:%x", i + 1);
        set6(&r.addrs[i], ip, 60000 + i);
    }
    n = tun_pkarr_record_encode(dns, sizeof dns, pub, &r);
    CHECK(n > 0);
    CHECK_INT_EQ(tun_dns_decode(&m, dns, (size_t)n), 0);
    /* v=1, then 43-44 byte tokens: five fit in 255 bytes, so 16 take four strings */
    CHECK_INT_EQ(m.rr[0].str_count, 5);
    for (size_t i = 0; i < m.n_str; i++)
        CHECK(m.str[i].len <= 255);
    CHECK_INT_EQ(tun_pkarr_record_decode(&d, pub, dns, (size_t)n), 0);
    CHECK_INT_EQ(d.n_addrs, TUN_PKARR_MAX_ADDRS);
    for (int i = 0; i < TUN_PKARR_MAX_ADDRS; i++)
        CHECK(has_addr(&d, &r.addrs[i]));

    /* Too much for 1000 bytes: four 240-byte relay URLs and 16 long IPv6 addresses. */
    r.n_relays = 4;
    for (int i = 0; i < 4; i++) {
        memset(r.relays[i], 'a' + i, TUN_PKARR_URL_MAX);
        memcpy(r.relays[i], "https://", 8);
        r.relays[i][TUN_PKARR_URL_MAX] = '\0';
    }
    CHECK_INT_EQ(tun_pkarr_record_encode(dns, sizeof dns, pub, &r), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_pkarr_publish(pkt, sizeof pkt, secret, NOW, &r), TUN_ETOOBIG);
    r.n_addrs = 0;
    CHECK_INT_EQ(tun_pkarr_record_encode(dns, sizeof dns, pub, &r), TUN_ETOOBIG);
    r.n_relays = 3; /* 12 + 62 (name) + 10 + 4 (v=1) + 3 * 247 */
    CHECK_INT_EQ(tun_pkarr_record_encode(dns, sizeof dns, pub, &r), 829);
    CHECK_INT_EQ(tun_pkarr_record_encode(dns, 500, pub, &r), TUN_ETOOBIG);

    /* What we refuse to publish. */
    r.n_relays = 1;
    strcpy(r.relays[0], "ftp://x");
    CHECK_INT_EQ(tun_pkarr_record_encode(dns, sizeof dns, pub, &r), TUN_EINVAL);
    strcpy(r.relays[0], "https:///path");
    CHECK_INT_EQ(tun_pkarr_record_encode(dns, sizeof dns, pub, &r), TUN_EINVAL);
    strcpy(r.relays[0], "https://a b");
    CHECK_INT_EQ(tun_pkarr_record_encode(dns, sizeof dns, pub, &r), TUN_EINVAL);
    memset(r.relays[0], 'a', TUN_PKARR_URL_MAX + 1); /* not terminated within the limit */
    memcpy(r.relays[0], "https://", 8);
    CHECK_INT_EQ(tun_pkarr_record_encode(dns, sizeof dns, pub, &r), TUN_EINVAL);
    strcpy(r.relays[0], "https://ok");
    r.n_addrs = 1;
    set4(&r.addrs[0], "1.2.3.4", 0);
    CHECK_INT_EQ(tun_pkarr_record_encode(dns, sizeof dns, pub, &r), TUN_EINVAL);
    r.addrs[0].ss_family = AF_UNIX;
    CHECK_INT_EQ(tun_pkarr_record_encode(dns, sizeof dns, pub, &r), TUN_EINVAL);
    r.n_addrs = TUN_PKARR_MAX_ADDRS + 1;
    CHECK_INT_EQ(tun_pkarr_record_encode(dns, sizeof dns, pub, &r), TUN_EINVAL);
}

/* Decode a record made of these strings (in one TXT record under our name). */
static int decode_strings(struct tun_pkarr_record *d, const uint8_t pub[32], const char *const *t,
                          size_t n)
{
    uint8_t dns[1000];
    int len = txt_packet(dns, sizeof dns, pub, "_tunnel", t, n, 77);
    if (len < 0)
        return len;
    return tun_pkarr_record_decode(d, pub, dns, (size_t)len);
}

static void test_record_parsing(void)
{
    static struct tun_pkarr_record d;
    uint8_t secret[32], pub[32];
    struct sockaddr_storage ss;
    CHECK_INT_EQ(tun_identity_generate(secret), 0);
    CHECK_INT_EQ(tun_identity_public(pub, secret), 0);

    /* Unknown keys, strings without '=' and bad tokens are skipped; duplicates dropped. */
    const char *t1[] = {
        "future=thing",
        "noequals",
        "relay=https://r1.example/",
        "relay=https://r1.example/",
        "relay=gopher://x",
        "v=1",
        "addr=01.2.3.4:5 1.2.3:5 1.2.3.4:0 1.2.3.4:65536 1.2.3.4:05 [fe80::1%eth0]:5 "
        "[::1]5 ::1:5 1.2.3.4 1.2.3.4:+5  1.2.3.4:65535  [::1]:1 1.2.3.4:65535",
        "addr=",
        "addr=[::ffff:1.2.3.4]:9",
    };
    CHECK_INT_EQ(decode_strings(&d, pub, t1, sizeof t1 / sizeof *t1), 0);
    CHECK_INT_EQ(d.ttl, 77);
    CHECK_INT_EQ(d.n_relays, 1);
    CHECK_STR_EQ(d.relays[0], "https://r1.example/");
    CHECK_INT_EQ(d.n_addrs, 3);
    set4(&ss, "1.2.3.4", 65535);
    CHECK(has_addr(&d, &ss));
    set6(&ss, "::1", 1);
    CHECK(has_addr(&d, &ss));
    set6(&ss, "::ffff:1.2.3.4", 9);
    CHECK(has_addr(&d, &ss));

    /* Versions. */
    const char *t2[] = {"relay=https://r1.example/"};
    CHECK_INT_EQ(decode_strings(&d, pub, t2, 1), TUN_EPROTO);
    CHECK_INT_EQ(d.n_relays, 0);
    const char *t3[] = {"v=2", "relay=https://r1.example/"};
    CHECK_INT_EQ(decode_strings(&d, pub, t3, 2), TUN_ERANGE);
    const char *t4[] = {"v=1", "v=2"};
    CHECK_INT_EQ(decode_strings(&d, pub, t4, 2), TUN_EFORMAT);
    const char *t5[] = {"v=1", "v=1"};
    CHECK_INT_EQ(decode_strings(&d, pub, t5, 2), 0);
    const char *t6[] = {"v=01"};
    CHECK_INT_EQ(decode_strings(&d, pub, t6, 1), TUN_ERANGE);
    const char *t7[] = {"v="};
    CHECK_INT_EQ(decode_strings(&d, pub, t7, 1), TUN_ERANGE);

    /* Lists stop at their maximum. */
    const char *t8[] = {
        "v=1",
        "relay=https://a/",
        "relay=https://b/",
        "relay=https://c/",
        "relay=https://d/",
        "relay=https://e/",
        "addr=1.0.0.1:1 1.0.0.2:1 1.0.0.3:1 1.0.0.4:1 1.0.0.5:1 1.0.0.6:1 1.0.0.7:1 "
        "1.0.0.8:1 1.0.0.9:1 1.0.0.10:1 1.0.0.11:1 1.0.0.12:1 1.0.0.13:1 1.0.0.14:1 "
        "1.0.0.15:1 1.0.0.16:1 1.0.0.17:1 1.0.0.18:1"};
    CHECK_INT_EQ(decode_strings(&d, pub, t8, sizeof t8 / sizeof *t8), 0);
    CHECK_INT_EQ(d.n_relays, TUN_PKARR_MAX_RELAYS);
    CHECK_INT_EQ(d.n_addrs, TUN_PKARR_MAX_ADDRS);
    set4(&ss, "1.0.0.16", 1);
    CHECK(has_addr(&d, &ss));
    set4(&ss, "1.0.0.17", 1);
    CHECK(!has_addr(&d, &ss));

    /* The iroh name is not ours. */
    const char *t9[] = {"v=1", "addr=1.2.3.4:5"};
    uint8_t dns[300];
    int len = txt_packet(dns, sizeof dns, pub, "_iroh", t9, 2, 30);
    CHECK_INT_EQ(tun_pkarr_record_decode(&d, pub, dns, (size_t)len), TUN_EPROTO);
    /* The name is matched ignoring case (resolvers may change it). */
    len = txt_packet(dns, sizeof dns, pub, "_TUNNEL", t9, 2, 30);
    CHECK_INT_EQ(tun_pkarr_record_decode(&d, pub, dns, (size_t)len), 0);
    CHECK_INT_EQ(d.n_addrs, 1);
}

/* A signed packet of `secret` at `ts` whose record has one address with port `port`. */
static int make_packet(uint8_t *pkt, const uint8_t secret[32], uint64_t ts, int port, uint32_t ttl)
{
    static struct tun_pkarr_record r;
    memset(&r, 0, sizeof r);
    r.ttl = ttl;
    r.n_addrs = 1;
    set4(&r.addrs[0], "192.0.2.1", port);
    return tun_pkarr_publish(pkt, TUN_PKARR_MAX_PACKET, secret, ts, &r);
}

static void test_store(void)
{
    static struct tun_pkarr_store s;
    static uint8_t secrets[5][32], pubs[5][32];
    uint8_t p1[1200], p2[1200], p3[1200];
    struct tun_pkarr_entry e;
    for (int i = 0; i < 5; i++) {
        CHECK_INT_EQ(tun_identity_generate(secrets[i]), 0);
        CHECK_INT_EQ(tun_identity_public(pubs[i], secrets[i]), 0);
    }
    CHECK_INT_EQ(tun_pkarr_store_init(&s, 0), TUN_EINVAL);
    CHECK_INT_EQ(tun_pkarr_store_init(&s, 3), 0);
    CHECK(s.max_age == 2 * 3600 * SEC);
    CHECK(s.max_skew == 600 * SEC);

    int n1 = make_packet(p1, secrets[0], NOW - 10 * SEC, 1, 30);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[0], NOW, &e), 0);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p1, (size_t)n1, NOW), 0);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[0], NOW, &e), 1);
    CHECK_INT_EQ(e.len, n1);
    CHECK_MEM_EQ(e.packet, p1, (size_t)n1);
    CHECK(e.timestamp == NOW - 10 * SEC);
    CHECK(e.stored_at == NOW);
    CHECK_INT_EQ(e.min_ttl, 30);

    /* Same packet again: accepted (idempotent PUT). */
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p1, (size_t)n1, NOW + SEC), 0);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[0], NOW + SEC, &e), 1);
    CHECK(e.stored_at == NOW);
    /* A different packet with the same or an older timestamp: conflict. */
    int n2 = make_packet(p2, secrets[0], NOW - 10 * SEC, 2, 30);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p2, (size_t)n2, NOW), TUN_EDENIED);
    n2 = make_packet(p2, secrets[0], NOW - 11 * SEC, 2, 30);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p2, (size_t)n2, NOW), TUN_EDENIED);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[0], NOW, &e), 1);
    CHECK_MEM_EQ(e.packet, p1, (size_t)n1);
    /* A newer one replaces it; then the old one is refused (a replay). */
    n2 = make_packet(p2, secrets[0], NOW - 9 * SEC, 2, 60);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p2, (size_t)n2, NOW), 0);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[0], NOW, &e), 1);
    CHECK_MEM_EQ(e.packet, p2, (size_t)n2);
    CHECK_INT_EQ(e.min_ttl, 60);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p1, (size_t)n1, NOW), TUN_EDENIED);

    /* Forgeries and garbage. */
    memcpy(p3, p2, (size_t)n2);
    p3[40] ^= 1;
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p3, (size_t)n2, NOW), TUN_ECRYPTO);
    memcpy(p3, p2, (size_t)n2);
    p3[103] ^= 1; /* a newer timestamp, but not signed */
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p3, (size_t)n2, NOW), TUN_ECRYPTO);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p3, 50, NOW), TUN_ELENGTH);
    static uint8_t big[1200];
    CHECK_INT_EQ(tun_pkarr_store_put(&s, big, 1105, NOW), TUN_ETOOBIG);

    /* The clock window: up to 10 minutes ahead, less than 2 hours old. */
    int n3 = make_packet(p3, secrets[1], NOW + 600 * SEC + 1, 3, 30);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p3, (size_t)n3, NOW), TUN_ERANGE);
    n3 = make_packet(p3, secrets[1], NOW + 600 * SEC, 3, 30);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p3, (size_t)n3, NOW), 0);
    n3 = make_packet(p3, secrets[2], NOW - 7200 * SEC, 3, 30);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p3, (size_t)n3, NOW), TUN_ERANGE);
    n3 = make_packet(p3, secrets[2], NOW - 7200 * SEC + 1, 3, 30);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p3, (size_t)n3, NOW), 0);
    CHECK_INT_EQ(s.n, 3);

    /* Expiry: the key-2 packet was 1 microsecond from its end. */
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[2], NOW, &e), 1);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[2], NOW + 1, &e), 0);
    CHECK_INT_EQ(s.n, 2);
    /* Key 0 (timestamp NOW - 9 s, stored at NOW) lives 2 h from its timestamp. */
    CHECK_INT_EQ(tun_pkarr_store_expire(&s, NOW + 7191 * SEC - 1), 0);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[0], NOW + 7191 * SEC - 1, &e), 1);
    CHECK_INT_EQ(tun_pkarr_store_expire(&s, NOW + 7191 * SEC), 1);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[0], NOW + 7191 * SEC, &e), 0);
    /* Key 1 was stored at NOW with a future timestamp: it lives 2 h from when it was stored. */
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[1], NOW + 7200 * SEC - 1, &e), 1);
    CHECK_INT_EQ(tun_pkarr_store_expire(&s, NOW + 7200 * SEC), 1);
    CHECK_INT_EQ(s.n, 0);
    /* After expiry the old packet is gone, so an older timestamp is accepted again if it is
     * still inside the window. */
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p1, (size_t)n1, NOW), 0);

    /* Eviction: capacity 3, keys stored in the order 0, 1, 2, then 0 republished; a fourth
     * key takes key 1's slot (the least recently stored). */
    tun_pkarr_store_free(&s);
    CHECK_INT_EQ(tun_pkarr_store_init(&s, 3), 0);
    for (int i = 0; i < 3; i++) {
        int n = make_packet(p3, secrets[i], NOW, 10 + i, 30);
        CHECK_INT_EQ(tun_pkarr_store_put(&s, p3, (size_t)n, NOW + (uint64_t)i), 0);
    }
    n1 = make_packet(p1, secrets[0], NOW + 5, 20, 30);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p1, (size_t)n1, NOW + 5), 0);
    n3 = make_packet(p3, secrets[3], NOW, 30, 30);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p3, (size_t)n3, NOW + 6), 0);
    CHECK_INT_EQ(s.n, 3);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[1], NOW + 6, &e), 0);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[0], NOW + 6, &e), 1);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[2], NOW + 6, &e), 1);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[3], NOW + 6, &e), 1);
    n3 = make_packet(p3, secrets[4], NOW, 40, 30);
    CHECK_INT_EQ(tun_pkarr_store_put(&s, p3, (size_t)n3, NOW + 7), 0);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[2], NOW + 7, &e), 0);

    /* The relay's PUT body form. */
    n2 = make_packet(p2, secrets[1], NOW + 1, 50, 30);
    CHECK_INT_EQ(tun_pkarr_store_put_payload(&s, pubs[1], p2 + 32, (size_t)n2 - 32, NOW + 8), 0);
    CHECK_INT_EQ(tun_pkarr_store_get(&s, pubs[1], NOW + 8, &e), 1);
    CHECK_MEM_EQ(e.packet, p2, (size_t)n2);
    /* The key in the URL path must be the signer. */
    n2 = make_packet(p2, secrets[1], NOW + 2, 50, 30);
    CHECK_INT_EQ(tun_pkarr_store_put_payload(&s, pubs[2], p2 + 32, (size_t)n2 - 32, NOW + 8),
                 TUN_ECRYPTO);
    CHECK_INT_EQ(tun_pkarr_store_put_payload(&s, pubs[2], p2 + 32, 1073, NOW + 8), TUN_ETOOBIG);
    tun_pkarr_store_free(&s);
}

/* The hash index against a plain model: many keys, puts, gets, evictions and expiries. */
static void test_store_model(void)
{
    enum { KEYS = 40, CAP = 16, OPS = 3000 };
    static struct tun_pkarr_store s;
    static uint8_t secrets[KEYS][32], pubs[KEYS][32];
    static uint8_t pkts[KEYS][TUN_PKARR_MAX_PACKET];
    static int lens[KEYS];
    uint64_t model_ts[KEYS] = {0}, model_stored[KEYS] = {0}, order[KEYS] = {0}, tick = 0;
    int present[KEYS] = {0}, evictions = 0, expiries = 0;
    uint64_t rng = 12345;
    for (int i = 0; i < KEYS; i++) {
        CHECK_INT_EQ(tun_identity_generate(secrets[i]), 0);
        CHECK_INT_EQ(tun_identity_public(pubs[i], secrets[i]), 0);
        lens[i] = make_packet(pkts[i], secrets[i], NOW, 1000 + i, 30);
    }
    CHECK_INT_EQ(tun_pkarr_store_init(&s, CAP), 0);
    s.max_age = 150; /* microseconds: entries both expire and get evicted below */
    uint64_t now = NOW;
    int mismatches = 0;
    for (int op = 0; op < OPS; op++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        int k = (int)((rng >> 33) % KEYS);
        now += (rng >> 20) % 7;
        /* Expire in the model: born = min(timestamp, stored). */
        for (int i = 0; i < KEYS; i++) {
            uint64_t born = model_ts[i] < model_stored[i] ? model_ts[i] : model_stored[i];
            if (present[i] && now - born >= s.max_age) {
                present[i] = 0;
                expiries++;
            }
        }
        if ((rng >> 40) % 3 == 0) {
            /* Re-sign only when needed: a fresh timestamp for this key. */
            lens[k] = make_packet(pkts[k], secrets[k], now, 1000 + k, 30);
            int rc = tun_pkarr_store_put(&s, pkts[k], (size_t)lens[k], now);
            int want = present[k] && model_ts[k] >= now ? TUN_EDENIED : 0;
            if (rc != want && !(want == TUN_EDENIED && rc == 0 && model_ts[k] == now)) {
                fprintf(stderr, "op %d put key %d: %d, expected %d\n", op, k, rc, want);
                mismatches++;
            }
            if (rc == 0) {
                if (!present[k]) {
                    int count = 0;
                    for (int i = 0; i < KEYS; i++)
                        count += present[i];
                    if (count == CAP) {
                        /* Evict the least recently stored live entry (by store order:
                         * several puts can happen at the same time). */
                        int oldest = -1;
                        for (int i = 0; i < KEYS; i++)
                            if (present[i] && (oldest < 0 || order[i] < order[oldest]))
                                oldest = i;
                        present[oldest] = 0;
                        evictions++;
                    }
                }
                if (!(present[k] && model_ts[k] == now)) {
                    model_stored[k] = now;
                    order[k] = ++tick;
                }
                present[k] = 1;
                model_ts[k] = now;
            }
        } else {
            struct tun_pkarr_entry e;
            int got = tun_pkarr_store_get(&s, pubs[k], now, &e);
            if (got != present[k]) {
                fprintf(stderr, "op %d get key %d: %d, expected %d\n", op, k, got, present[k]);
                mismatches++;
            }
            if (got && (e.timestamp != model_ts[k] || memcmp(e.packet, pubs[k], 32) != 0))
                mismatches++;
        }
        if (op % 500 == 0)
            tun_pkarr_store_expire(&s, now);
    }
    CHECK_INT_EQ(mismatches, 0);
    CHECK(evictions > 50 && expiries > 50); /* both paths were exercised */
    size_t count = 0;
    for (int i = 0; i < KEYS; i++)
        count += (size_t)present[i];
    tun_pkarr_store_expire(&s, now);
    CHECK_INT_EQ(s.n, count);
    tun_pkarr_store_free(&s);
}

static void test_cache(void)
{
    static struct tun_pkarr_cache c;
    static struct tun_pkarr_record r;
    uint8_t keys[TUN_PKARR_CACHE_SIZE + 1][32];
    uint64_t ts;
    for (int i = 0; i <= TUN_PKARR_CACHE_SIZE; i++)
        memset(keys[i], i + 1, 32);
    tun_pkarr_cache_init(&c, 10, 300);
    memset(&r, 0, sizeof r);
    r.ttl = 30;
    r.n_relays = 1;
    strcpy(r.relays[0], "https://r/");

    CHECK(tun_pkarr_cache_get(&c, keys[0], NOW, NULL) == NULL);
    CHECK_INT_EQ(tun_pkarr_cache_put(&c, keys[0], 1000, &r, NOW), 0);
    const struct tun_pkarr_record *got = tun_pkarr_cache_get(&c, keys[0], NOW, &ts);
    CHECK(got != NULL && strcmp(got->relays[0], "https://r/") == 0);
    CHECK(ts == 1000);
    CHECK(tun_pkarr_cache_get(&c, keys[0], NOW + 30 * SEC - 1, NULL) != NULL);
    CHECK(tun_pkarr_cache_get(&c, keys[0], NOW + 30 * SEC, NULL) == NULL);

    /* A relay serving an older packet is refused, even after the entry expired. */
    CHECK_INT_EQ(tun_pkarr_cache_put(&c, keys[0], 999, &r, NOW + 40 * SEC), TUN_EDENIED);
    /* The same packet again refreshes it. */
    CHECK_INT_EQ(tun_pkarr_cache_put(&c, keys[0], 1000, &r, NOW + 40 * SEC), 0);
    CHECK(tun_pkarr_cache_get(&c, keys[0], NOW + 60 * SEC, NULL) != NULL);
    tun_pkarr_cache_invalidate(&c, keys[0]);
    CHECK(tun_pkarr_cache_get(&c, keys[0], NOW + 60 * SEC, NULL) == NULL);
    CHECK_INT_EQ(tun_pkarr_cache_put(&c, keys[0], 999, &r, NOW + 60 * SEC), TUN_EDENIED);

    /* TTLs are clamped to [10, 300] seconds. */
    r.ttl = 1;
    CHECK_INT_EQ(tun_pkarr_cache_put(&c, keys[1], 5, &r, NOW), 0);
    CHECK(tun_pkarr_cache_get(&c, keys[1], NOW + 10 * SEC - 1, NULL) != NULL);
    CHECK(tun_pkarr_cache_get(&c, keys[1], NOW + 10 * SEC, NULL) == NULL);
    r.ttl = 100000;
    CHECK_INT_EQ(tun_pkarr_cache_put(&c, keys[2], 5, &r, NOW), 0);
    CHECK(tun_pkarr_cache_get(&c, keys[2], NOW + 300 * SEC - 1, NULL) != NULL);
    CHECK(tun_pkarr_cache_get(&c, keys[2], NOW + 300 * SEC, NULL) == NULL);

    /* Full: the entry expiring first (key 0, invalidated) is replaced, the others stay. */
    r.ttl = 200;
    for (int i = 3; i < TUN_PKARR_CACHE_SIZE; i++)
        CHECK_INT_EQ(tun_pkarr_cache_put(&c, keys[i], 5, &r, NOW), 0);
    CHECK_INT_EQ(tun_pkarr_cache_put(&c, keys[TUN_PKARR_CACHE_SIZE], 5, &r, NOW), 0);
    CHECK(tun_pkarr_cache_get(&c, keys[TUN_PKARR_CACHE_SIZE], NOW, NULL) != NULL);
    CHECK(tun_pkarr_cache_get(&c, keys[2], NOW, NULL) != NULL);
    CHECK(tun_pkarr_cache_get(&c, keys[3], NOW, NULL) != NULL);
    CHECK_INT_EQ(tun_pkarr_cache_put(&c, keys[1], 4, &r, NOW), TUN_EDENIED);
    /* Key 0 is forgotten entirely: any timestamp is accepted again. */
    CHECK_INT_EQ(tun_pkarr_cache_put(&c, keys[0], 1, &r, NOW), 0);
}

int main(void)
{
    test_zbase32();
    test_keys();
    test_vectors();
    test_sign_verify();
    test_record();
    test_record_parsing();
    test_store();
    test_store_model();
    test_cache();
    return TEST_DONE();
}
