/*
 * Fuzz target for discovery: the DNS decoder (src/discovery/dns.c), our TXT record parser,
 * z-base-32 keys, signed-packet verification and the relay store (src/discovery/pkarr*.c).
 *
 * Every input is decoded as a DNS message; what decodes must point inside the input, and the
 * answer records written again with the writer must decode to the same records. Our record
 * is extracted for a fixed key and written again; it must read back the same. One input in
 * sixteen (chosen by its last byte, to keep the Ed25519 work affordable) also goes through
 * the signing path: a DNS message that parses is signed, must verify and be accepted by the
 * store, and the packet with one byte changed (where is chosen by the input) must be refused
 * by both. Build with libFuzzer (see fuzz/README.md) or run through fuzz/standalone.c.
 */
#include "discovery/dns.h"
#include "discovery/pkarr.h"
#include "identity/identity.h"
#include "util/error.h"
#include "util/zbase32.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(int cond)
{
    if (!cond)
        abort();
}

static const uint8_t secret[32] = {7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
                                   7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7};
static uint8_t pub[32];
static struct tun_pkarr_store store;
static uint64_t now = 1790000000ull * 1000000;

static int inside(const uint8_t *p, size_t n, const uint8_t *data, size_t size)
{
    return p >= data && n <= size && (size_t)(p - data) <= size - n;
}

static void check_name(const struct tun_dns_name *n)
{
    static char text[1100];
    require(n->len >= 1);
    size_t i = 0;
    while (n->wire[i] != 0) {
        require(n->wire[i] <= TUN_DNS_LABEL_MAX);
        i += 1 + (size_t)n->wire[i];
        require(i < n->len);
    }
    require(i + 1 == n->len);
    int tl = tun_dns_name_to_text(text, sizeof text, n);
    require(tl > 0);
    if (memchr(text, '\\', (size_t)tl) == NULL) {
        struct tun_dns_name back;
        require(tun_dns_name_from_text(&back, text, (size_t)tl) == 0);
        require(back.len == n->len && memcmp(back.wire, n->wire, n->len) == 0);
    }
}

/* Write the answer records of `m` again and check they decode the same. */
static void rewrite(const struct tun_dns_msg *m, size_t size)
{
    static uint8_t out[70000];
    static struct tun_dns_msg c;
    struct tun_dns_writer w;
    size_t n = 0;
    if (m->truncated || size > 60000)
        return;
    tun_dns_writer_init(&w, out, sizeof out, m->id, m->flags);
    for (size_t i = 0; i < m->n_rr; i++) {
        const struct tun_dns_rr *rr = &m->rr[i];
        if (rr->section != TUN_DNS_ANSWER)
            continue;
        n++;
        if (rr->type == TUN_DNS_TYPE_TXT)
            require(tun_dns_add_txt(&w, &rr->name, rr->ttl, &m->str[rr->str_first],
                                    rr->str_count) == 0);
        else if (rr->type == TUN_DNS_TYPE_A)
            require(tun_dns_add_a(&w, &rr->name, rr->ttl, rr->rdata) == 0);
        else if (rr->type == TUN_DNS_TYPE_AAAA)
            require(tun_dns_add_aaaa(&w, &rr->name, rr->ttl, rr->rdata) == 0);
        else
            require(tun_dns_add_rr(&w, &rr->name, rr->type, rr->ttl, rr->rdata, rr->rdlen) == 0);
    }
    int len = tun_dns_finish(&w);
    require(len >= TUN_DNS_HEADER_LEN);
    require(tun_dns_decode(&c, out, (size_t)len) == 0);
    require(c.id == m->id && c.flags == m->flags && c.n_rr == n && c.ancount == n);
    size_t k = 0;
    for (size_t i = 0; i < m->n_rr; i++) {
        const struct tun_dns_rr *a = &m->rr[i];
        if (a->section != TUN_DNS_ANSWER)
            continue;
        const struct tun_dns_rr *b = &c.rr[k++];
        /* Compression matches names ignoring case, as DNS does. */
        require(tun_dns_name_equal(&b->name, &a->name));
        require(b->type == a->type && b->ttl == a->ttl && b->cls == TUN_DNS_CLASS_IN);
        require(b->rdlen == a->rdlen && memcmp(b->rdata, a->rdata, a->rdlen) == 0);
        require(b->str_count == a->str_count);
    }
}

static void fuzz_dns(const uint8_t *data, size_t size)
{
    static struct tun_dns_msg m;
    int rc = tun_dns_decode(&m, data, size);
    require(rc == 0 || rc == TUN_ELENGTH || rc == TUN_EFORMAT);
    require(tun_dns_decode(NULL, data, size) == rc);
    if (rc != 0)
        return;
    require(m.n_rr <= TUN_DNS_MAX_RR && m.n_str <= TUN_DNS_MAX_STR);
    require(m.n_rr == (size_t)m.ancount + m.nscount + m.arcount || m.truncated);
    for (size_t i = 0; i < m.n_rr; i++) {
        const struct tun_dns_rr *rr = &m.rr[i];
        check_name(&rr->name);
        require(rr->section >= TUN_DNS_ANSWER && rr->section <= TUN_DNS_ADDITIONAL);
        require(inside(rr->rdata, rr->rdlen, data, size));
        require((size_t)rr->str_first + rr->str_count <= m.n_str);
        for (size_t k = 0; k < rr->str_count; k++) {
            const struct tun_dns_str *s = &m.str[rr->str_first + k];
            require(inside(s->p, s->len, rr->rdata, rr->rdlen));
        }
    }
    rewrite(&m, size);
}

static int same_record(const struct tun_pkarr_record *a, const struct tun_pkarr_record *b)
{
    if (a->n_relays != b->n_relays || a->n_addrs != b->n_addrs || a->ttl != b->ttl)
        return 0;
    for (size_t i = 0; i < a->n_relays; i++)
        if (strcmp(a->relays[i], b->relays[i]) != 0)
            return 0;
    for (size_t i = 0; i < a->n_addrs; i++) {
        size_t n = a->addrs[i].ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                                    : sizeof(struct sockaddr_in6);
        if (memcmp(&a->addrs[i], &b->addrs[i], n) != 0)
            return 0;
    }
    return 1;
}

static void fuzz_record(const uint8_t *data, size_t size)
{
    static struct tun_pkarr_record r, again;
    static uint8_t dns[TUN_PKARR_MAX_DNS];
    int rc = tun_pkarr_record_decode(&r, pub, data, size);
    require(rc == 0 || rc == TUN_EFORMAT || rc == TUN_EPROTO || rc == TUN_ERANGE);
    if (rc != 0)
        return;
    require(r.n_relays <= TUN_PKARR_MAX_RELAYS && r.n_addrs <= TUN_PKARR_MAX_ADDRS);
    for (size_t i = 0; i < r.n_relays; i++)
        require(strlen(r.relays[i]) <= TUN_PKARR_URL_MAX);
    int n = tun_pkarr_record_encode(dns, sizeof dns, pub, &r);
    if (n == TUN_ETOOBIG)
        return; /* 4 long URLs and 16 IPv6 addresses do not fit 1000 bytes */
    require(n > 0);
    require(tun_pkarr_record_decode(&again, pub, dns, (size_t)n) == 0);
    require(same_record(&r, &again));
}

static void fuzz_keys(const uint8_t *data, size_t size)
{
    uint8_t out[64], key[32];
    char text[128];
    int n = tun_zbase32_decode(out, sizeof out, (const char *)data, size, NULL);
    if (n >= 0) {
        /* Accepted text is canonical: encoding gives it back, lowercased. */
        require(tun_zbase32_encode(text, sizeof text, out, (size_t)n) == (int)size);
        for (size_t i = 0; i < size; i++) {
            char c = (char)data[i];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            require(text[i] == c);
        }
    }
    int rc = tun_pkarr_key_parse(key, (const char *)data, size);
    require(rc == 0 || rc == TUN_ELENGTH || rc == TUN_EFORMAT || rc == TUN_ECRYPTO);
}

static void fuzz_signed(const uint8_t *data, size_t size)
{
    static uint8_t pkt[TUN_PKARR_MAX_PACKET], bad[TUN_PKARR_MAX_PACKET];
    struct tun_pkarr_packet p;
    struct tun_pkarr_entry e;

    /* The input itself as a packet and as a PUT body for our key. Only a packet we signed
     * can pass, and then the store must hold exactly it. */
    int rc = tun_pkarr_verify(&p, data, size);
    require(rc != 0 || size >= TUN_PKARR_HEADER_LEN);
    rc = tun_pkarr_store_put(&store, data, size, now);
    require(rc != 0 || (tun_pkarr_store_get(&store, data, now, &e) == 1 && e.len == size &&
                        memcmp(e.packet, data, size) == 0));
    rc = tun_pkarr_store_put_payload(&store, pub, data, size, now);
    require(rc != 0 || (tun_pkarr_store_get(&store, pub, now, &e) == 1 && e.len == size + 32 &&
                        memcmp(e.packet + 32, data, size) == 0));

    /* The input as the DNS of our own packet. */
    if (size == 0)
        return;
    now += 1000;
    int n = tun_pkarr_sign(pkt, sizeof pkt, secret, now, data, size);
    if (n < 0) {
        require(n == TUN_ETOOBIG || n == TUN_EFORMAT);
        return;
    }
    require(tun_pkarr_verify(&p, pkt, (size_t)n) == 0);
    require(p.timestamp == now && p.dns_len == size);
    require(tun_pkarr_store_put(&store, pkt, (size_t)n, now) == 0);
    require(tun_pkarr_store_get(&store, pub, now, &e) == 1);
    require(e.len == (size_t)n && memcmp(e.packet, pkt, e.len) == 0);
    /* Replaying it is fine (same bytes); an older one is not. */
    require(tun_pkarr_store_put(&store, pkt, (size_t)n, now) == 0);

    /* One byte changed, anywhere: refused by verify and by the store. */
    size_t at = size >= 2 ? ((size_t)data[0] << 8 | data[1]) % (size_t)n : 0;
    uint8_t x = size >= 3 && data[2] ? data[2] : 1;
    memcpy(bad, pkt, (size_t)n);
    bad[at] ^= x;
    require(tun_pkarr_verify(NULL, bad, (size_t)n) != 0);
    require(tun_pkarr_store_put(&store, bad, (size_t)n, now) != 0);
    require(tun_pkarr_store_get(&store, pub, now, &e) == 1 && memcmp(e.packet, pkt, e.len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        if (tun_identity_public(pub, secret) != 0 || tun_pkarr_store_init(&store, 4) != 0)
            abort();
        ready = 1;
    }
    fuzz_dns(data, size);
    fuzz_record(data, size);
    fuzz_keys(data, size);
    if (size > 0 && data[size - 1] % 16 == 0)
        fuzz_signed(data, size);
    return 0;
}
