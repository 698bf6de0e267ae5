#include "discovery/pkarr.h"
#include "util/error.h"
#include "util/zbase32.h"

#include <arpa/inet.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

int tun_pkarr_key_format(char out[TUN_PKARR_Z32_LEN + 1], const uint8_t key[TUN_PKARR_KEY_LEN])
{
    /* 32 bytes always fit the 53-byte buffer. */
    return tun_zbase32_encode(out, TUN_PKARR_Z32_LEN + 1, key, TUN_PKARR_KEY_LEN);
}

int tun_pkarr_key_parse(uint8_t key[TUN_PKARR_KEY_LEN], const char *s, size_t len)
{
    uint8_t k[TUN_PKARR_KEY_LEN];
    if (s == NULL)
        return TUN_EINVAL;
    if (len >= 3 && memcmp(s, "pk:", 3) == 0) {
        s += 3;
        len -= 3;
    }
    if (len != TUN_PKARR_Z32_LEN)
        return TUN_ELENGTH;
    int n = tun_zbase32_decode(k, sizeof k, s, len, NULL);
    if (n < 0)
        return TUN_EFORMAT; /* bad character or non-zero trailing bits */
    if (sodium_init() < 0 || !crypto_core_ed25519_is_valid_point(k))
        return TUN_ECRYPTO;
    memcpy(key, k, sizeof k);
    return 0;
}

int tun_pkarr_signable(uint8_t *out, size_t cap, uint64_t timestamp, const uint8_t *dns,
                       size_t dns_len)
{
    char prefix[48];
    if (dns_len > TUN_PKARR_MAX_DNS || (dns == NULL && dns_len > 0))
        return TUN_ETOOBIG;
    int n = snprintf(prefix, sizeof prefix, "3:seqi%llue1:v%zu:", (unsigned long long)timestamp,
                     dns_len);
    if (n < 0 || (size_t)n >= sizeof prefix || out == NULL || cap < (size_t)n + dns_len)
        return TUN_ETOOBIG;
    memcpy(out, prefix, (size_t)n);
    if (dns_len)
        memcpy(out + n, dns, dns_len);
    return n + (int)dns_len;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

int tun_pkarr_sign(uint8_t *out, size_t cap, const uint8_t secret[32], uint64_t timestamp,
                   const uint8_t *dns, size_t dns_len)
{
    uint8_t signable[TUN_PKARR_MAX_DNS + 64];
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
    if (secret == NULL || dns == NULL)
        return TUN_EINVAL;
    if (dns_len > TUN_PKARR_MAX_DNS || out == NULL || cap < TUN_PKARR_HEADER_LEN + dns_len)
        return TUN_ETOOBIG;
    if (tun_dns_decode(NULL, dns, dns_len) != 0)
        return TUN_EFORMAT;
    int n = tun_pkarr_signable(signable, sizeof signable, timestamp, dns, dns_len);
    if (n < 0)
        return n;
    if (sodium_init() < 0 || crypto_sign_seed_keypair(pk, sk, secret) != 0) {
        sodium_memzero(sk, sizeof sk);
        return TUN_ECRYPTO;
    }
    int rc = crypto_sign_detached(out + TUN_PKARR_KEY_LEN, NULL, signable, (size_t)n, sk);
    sodium_memzero(sk, sizeof sk);
    if (rc != 0)
        return TUN_ECRYPTO;
    memcpy(out, pk, TUN_PKARR_KEY_LEN);
    put64(out + TUN_PKARR_KEY_LEN + TUN_PKARR_SIG_LEN, timestamp);
    memmove(out + TUN_PKARR_HEADER_LEN, dns, dns_len);
    return (int)(TUN_PKARR_HEADER_LEN + dns_len);
}

int tun_pkarr_verify(struct tun_pkarr_packet *p, const uint8_t *pkt, size_t len)
{
    uint8_t signable[TUN_PKARR_MAX_DNS + 64];
    if (pkt == NULL || len < TUN_PKARR_HEADER_LEN)
        return TUN_ELENGTH;
    if (len > TUN_PKARR_MAX_PACKET)
        return TUN_ETOOBIG;
    const uint8_t *sig = pkt + TUN_PKARR_KEY_LEN;
    uint64_t ts = get64(sig + TUN_PKARR_SIG_LEN);
    const uint8_t *dns = pkt + TUN_PKARR_HEADER_LEN;
    size_t dns_len = len - TUN_PKARR_HEADER_LEN;
    int n = tun_pkarr_signable(signable, sizeof signable, ts, dns, dns_len);
    if (n < 0)
        return n;
    /* libsodium also refuses small-order keys and non-canonical signatures. */
    if (sodium_init() < 0 || crypto_sign_verify_detached(sig, signable, (size_t)n, pkt) != 0)
        return TUN_ECRYPTO;
    /* pkarr checks the signature before the DNS: a forged packet costs no parsing. */
    if (tun_dns_decode(NULL, dns, dns_len) != 0)
        return TUN_EFORMAT;
    if (p) {
        p->key = pkt;
        p->sig = sig;
        p->timestamp = ts;
        p->dns = dns;
        p->dns_len = dns_len;
    }
    return 0;
}

int tun_pkarr_from_payload(uint8_t *out, size_t cap, const uint8_t key[TUN_PKARR_KEY_LEN],
                           const uint8_t *payload, size_t len)
{
    if (key == NULL || (payload == NULL && len > 0))
        return TUN_EINVAL;
    if (len < TUN_PKARR_HEADER_LEN - TUN_PKARR_KEY_LEN)
        return TUN_ELENGTH;
    if (len > TUN_PKARR_MAX_PAYLOAD || out == NULL || cap < TUN_PKARR_KEY_LEN + len)
        return TUN_ETOOBIG;
    memmove(out + TUN_PKARR_KEY_LEN, payload, len);
    memcpy(out, key, TUN_PKARR_KEY_LEN);
    return (int)(TUN_PKARR_KEY_LEN + len);
}

/* ---- our record ------------------------------------------------------------------------ */

static int record_name(struct tun_dns_name *name, const uint8_t key[TUN_PKARR_KEY_LEN])
{
    char text[sizeof TUN_PKARR_NAME + 1 + TUN_PKARR_Z32_LEN + 1];
    memcpy(text, TUN_PKARR_NAME ".", sizeof TUN_PKARR_NAME);
    tun_pkarr_key_format(text + sizeof TUN_PKARR_NAME, key);
    return tun_dns_name_from_text(name, text, strlen(text));
}

/* A relay URL we are willing to publish and to dial: http(s)://host..., printable, short. */
static int url_ok(const char *u, size_t len)
{
    size_t skip;
    if (len > TUN_PKARR_URL_MAX)
        return 0;
    if (len > 8 && memcmp(u, "https://", 8) == 0)
        skip = 8;
    else if (len > 7 && memcmp(u, "http://", 7) == 0)
        skip = 7;
    else
        return 0;
    if (u[skip] == '/')
        return 0; /* no host */
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)u[i] <= 0x20 || (unsigned char)u[i] >= 0x7f)
            return 0;
    return 1;
}

/* "1.2.3.4:5" or "[::1]:5" into `out` (at least 64 bytes); returns the length or -1. */
static int format_addr(char *out, const struct sockaddr_storage *ss)
{
    char ip[INET6_ADDRSTRLEN];
    unsigned port;
    int n;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)ss;
        port = ntohs(a->sin_port);
        if (port == 0 || !inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip))
            return -1;
        n = snprintf(out, 64, "%s:%u", ip, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)ss;
        port = ntohs(a->sin6_port);
        if (port == 0 || !inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip))
            return -1;
        n = snprintf(out, 64, "[%s]:%u", ip, port);
    } else {
        return -1;
    }
    return n > 0 && n < 64 ? n : -1;
}

int tun_pkarr_record_encode(uint8_t *dns, size_t cap, const uint8_t key[TUN_PKARR_KEY_LEN],
                            const struct tun_pkarr_record *r)
{
    /* Strings: v=1, one per relay, and the addr= strings (at most one per address). */
    uint8_t text[(1 + TUN_PKARR_MAX_RELAYS + TUN_PKARR_MAX_ADDRS) * TUN_DNS_TXT_MAX];
    struct tun_dns_str strs[1 + TUN_PKARR_MAX_RELAYS + TUN_PKARR_MAX_ADDRS];
    size_t ns = 0, used = 0;
    struct tun_dns_name name;
    if (dns == NULL || key == NULL || r == NULL || r->n_relays > TUN_PKARR_MAX_RELAYS ||
        r->n_addrs > TUN_PKARR_MAX_ADDRS)
        return TUN_EINVAL;
    if (record_name(&name, key) != 0)
        return TUN_EINVAL;

    memcpy(text, "v=1", 3);
    strs[ns++] = (struct tun_dns_str){text, 3};
    used = 3;
    for (size_t i = 0; i < r->n_relays; i++) {
        size_t l = strnlen(r->relays[i], TUN_PKARR_URL_MAX + 1);
        if (!url_ok(r->relays[i], l))
            return TUN_EINVAL;
        memcpy(text + used, "relay=", 6);
        memcpy(text + used + 6, r->relays[i], l);
        strs[ns++] = (struct tun_dns_str){text + used, (uint8_t)(6 + l)};
        used += 6 + l;
    }
    /* Pack addresses into as few strings as fit 255 bytes each. */
    size_t cur = 0; /* index in strs of the open addr= string, 0 if none */
    for (size_t i = 0; i < r->n_addrs; i++) {
        char a[64];
        int al = format_addr(a, &r->addrs[i]);
        if (al < 0)
            return TUN_EINVAL;
        if (cur && strs[cur].len + 1 + (size_t)al <= TUN_DNS_TXT_MAX) {
            text[used++] = ' ';
            memcpy(text + used, a, (size_t)al);
            used += (size_t)al;
            strs[cur].len = (uint8_t)(strs[cur].len + 1 + al);
        } else {
            cur = ns++;
            memcpy(text + used, "addr=", 5);
            memcpy(text + used + 5, a, (size_t)al);
            strs[cur] = (struct tun_dns_str){text + used, (uint8_t)(5 + al)};
            used += 5 + (size_t)al;
        }
    }

    struct tun_dns_writer w;
    size_t limit = cap < TUN_PKARR_MAX_DNS ? cap : TUN_PKARR_MAX_DNS;
    tun_dns_writer_init(&w, dns, limit, 0, TUN_DNS_FLAG_QR | TUN_DNS_FLAG_AA);
    tun_dns_add_txt(&w, &name, r->ttl, strs, ns);
    int n = tun_dns_finish(&w);
    return n == TUN_EINVAL ? TUN_EINVAL : n < 0 ? TUN_ETOOBIG : n;
}

/* Strict decimal port: 1..65535, no sign, no leading zero. -1 if not. */
static long parse_port(const char *s, size_t len)
{
    long v = 0;
    if (len == 0 || len > 5 || s[0] == '0')
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= 65535 ? v : -1;
}

/* "1.2.3.4:5" or "[v6]:5" into `ss`; 0 or -1. inet_pton takes no zone ids, and for IPv4
 * exactly four decimal parts. */
static int parse_addr(struct sockaddr_storage *ss, const char *s, size_t len)
{
    char ip[INET6_ADDRSTRLEN + 1];
    size_t colon, iplen;
    const char *ipstart;
    memset(ss, 0, sizeof *ss);
    if (len > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL || (size_t)(close - s) + 1 >= len || close[1] != ':')
            return -1;
        ipstart = s + 1;
        iplen = (size_t)(close - s) - 1;
        colon = (size_t)(close - s) + 1;
    } else {
        const char *c = memchr(s, ':', len);
        if (c == NULL)
            return -1;
        ipstart = s;
        iplen = (size_t)(c - s);
        colon = iplen;
    }
    long port = parse_port(s + colon + 1, len - colon - 1);
    if (port < 0 || iplen == 0 || iplen >= sizeof ip)
        return -1;
    memcpy(ip, ipstart, iplen);
    ip[iplen] = '\0';
    if (s[0] == '[') {
        struct sockaddr_in6 *a = (void *)ss;
        if (inet_pton(AF_INET6, ip, &a->sin6_addr) != 1)
            return -1;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
    } else {
        struct sockaddr_in *a = (void *)ss;
        if (inet_pton(AF_INET, ip, &a->sin_addr) != 1)
            return -1;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
    }
    return 0;
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

static void add_relay(struct tun_pkarr_record *r, const char *u, size_t len)
{
    if (!url_ok(u, len) || r->n_relays == TUN_PKARR_MAX_RELAYS)
        return;
    for (size_t i = 0; i < r->n_relays; i++)
        if (strlen(r->relays[i]) == len && memcmp(r->relays[i], u, len) == 0)
            return;
    memcpy(r->relays[r->n_relays], u, len);
    r->relays[r->n_relays][len] = '\0';
    r->n_relays++;
}

static void add_addrs(struct tun_pkarr_record *r, const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && s[i] == ' ')
            i++;
        size_t start = i;
        while (i < len && s[i] != ' ')
            i++;
        struct sockaddr_storage ss;
        if (i == start || r->n_addrs == TUN_PKARR_MAX_ADDRS ||
            parse_addr(&ss, s + start, i - start) != 0)
            continue;
        int dup = 0;
        for (size_t k = 0; k < r->n_addrs && !dup; k++)
            dup = same_addr(&r->addrs[k], &ss);
        if (!dup)
            r->addrs[r->n_addrs++] = ss;
    }
}

int tun_pkarr_record_decode(struct tun_pkarr_record *r, const uint8_t key[TUN_PKARR_KEY_LEN],
                            const uint8_t *dns, size_t len)
{
    struct tun_dns_msg m;
    struct tun_dns_name name;
    int version = -1; /* -1 none seen, -2 not a number we know, else the version */
    int seen_ttl = 0;
    if (r == NULL || key == NULL)
        return TUN_EINVAL;
    memset(r, 0, sizeof *r);
    if (tun_dns_decode(&m, dns, len) != 0)
        return TUN_EFORMAT;
    if (record_name(&name, key) != 0)
        return TUN_EINVAL;
    for (size_t i = 0; i < m.n_rr; i++) {
        const struct tun_dns_rr *rr = &m.rr[i];
        if (rr->section != TUN_DNS_ANSWER || rr->type != TUN_DNS_TYPE_TXT ||
            rr->cls != TUN_DNS_CLASS_IN || !tun_dns_name_equal(&rr->name, &name))
            continue;
        if (!seen_ttl || rr->ttl < r->ttl)
            r->ttl = rr->ttl;
        seen_ttl = 1;
        for (size_t k = 0; k < rr->str_count; k++) {
            const struct tun_dns_str *s = &m.str[rr->str_first + k];
            const char *t = (const char *)s->p;
            const char *eq = memchr(t, '=', s->len);
            if (eq == NULL)
                continue; /* an attribute without a value: nothing we know */
            size_t kl = (size_t)(eq - t), vl = s->len - kl - 1;
            const char *v = eq + 1;
            if (kl == 1 && t[0] == 'v') {
                int this = vl == 1 && v[0] == '1' ? 1 : -2;
                if (version != -1 && version != this)
                    return TUN_EFORMAT;
                version = this;
            } else if (kl == 5 && memcmp(t, "relay", 5) == 0) {
                add_relay(r, v, vl);
            } else if (kl == 4 && memcmp(t, "addr", 4) == 0) {
                add_addrs(r, v, vl);
            }
        }
    }
    if (version == -1) {
        memset(r, 0, sizeof *r);
        return TUN_EPROTO;
    }
    if (version != TUN_PKARR_VERSION) {
        memset(r, 0, sizeof *r);
        return TUN_ERANGE;
    }
    return 0;
}

int tun_pkarr_publish(uint8_t *out, size_t cap, const uint8_t secret[32], uint64_t timestamp,
                      const struct tun_pkarr_record *r)
{
    uint8_t key[TUN_PKARR_KEY_LEN], dns[TUN_PKARR_MAX_DNS];
    unsigned char sk[crypto_sign_SECRETKEYBYTES];
    if (secret == NULL || r == NULL)
        return TUN_EINVAL;
    if (sodium_init() < 0 || crypto_sign_seed_keypair(key, sk, secret) != 0) {
        sodium_memzero(sk, sizeof sk);
        return TUN_ECRYPTO;
    }
    sodium_memzero(sk, sizeof sk);
    int n = tun_pkarr_record_encode(dns, sizeof dns, key, r);
    if (n < 0)
        return n;
    return tun_pkarr_sign(out, cap, secret, timestamp, dns, (size_t)n);
}

int tun_pkarr_read_payload(struct tun_pkarr_record *r, uint64_t *timestamp,
                           const uint8_t key[TUN_PKARR_KEY_LEN], const uint8_t *payload, size_t len)
{
    uint8_t pkt[TUN_PKARR_MAX_PACKET];
    struct tun_pkarr_packet p;
    int n = tun_pkarr_from_payload(pkt, sizeof pkt, key, payload, len);
    if (n < 0)
        return n;
    int rc = tun_pkarr_verify(&p, pkt, (size_t)n);
    if (rc < 0)
        return rc;
    rc = tun_pkarr_record_decode(r, key, p.dns, p.dns_len);
    if (rc < 0)
        return rc;
    if (timestamp)
        *timestamp = p.timestamp;
    return 0;
}
