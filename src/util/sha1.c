/* SHA-1 (RFC 3174) and HMAC-SHA1 (RFC 2104): STUN MESSAGE-INTEGRITY and the WebSocket handshake. */
#include "util/sha1.h"

#include <sodium.h>
#include <string.h>

static uint32_t rol(uint32_t x, int n)
{
    return (x << n) | (x >> (32 - n));
}

static void compress(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

void tun_sha1_init(struct tun_sha1 *s)
{
    s->h[0] = 0x67452301;
    s->h[1] = 0xEFCDAB89;
    s->h[2] = 0x98BADCFE;
    s->h[3] = 0x10325476;
    s->h[4] = 0xC3D2E1F0;
    s->total = 0;
    s->used = 0;
}

void tun_sha1_update(struct tun_sha1 *s, const void *data, size_t len)
{
    const uint8_t *p = data;
    s->total += len;
    if (s->used > 0) {
        size_t take = TUN_SHA1_BLOCK - s->used;
        if (take > len)
            take = len;
        memcpy(s->block + s->used, p, take);
        s->used += take;
        p += take;
        len -= take;
        if (s->used < TUN_SHA1_BLOCK)
            return;
        compress(s->h, s->block);
        s->used = 0;
    }
    for (; len >= TUN_SHA1_BLOCK; p += TUN_SHA1_BLOCK, len -= TUN_SHA1_BLOCK)
        compress(s->h, p);
    if (len > 0) {
        memcpy(s->block, p, len);
        s->used = len;
    }
}

void tun_sha1_final(struct tun_sha1 *s, uint8_t out[TUN_SHA1_LEN])
{
    uint64_t bits = s->total * 8;
    uint8_t pad[TUN_SHA1_BLOCK + 8] = {0x80};
    /* Pad to 56 mod 64, then the message length in bits, big-endian. */
    size_t padlen = (s->used < 56 ? 56 - s->used : 120 - s->used);
    for (int i = 0; i < 8; i++)
        pad[padlen + (size_t)i] = (uint8_t)(bits >> (56 - 8 * i));
    tun_sha1_update(s, pad, padlen + 8);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)s->h[i];
    }
    sodium_memzero(s, sizeof(*s));
}

void tun_sha1(const void *data, size_t len, uint8_t out[TUN_SHA1_LEN])
{
    struct tun_sha1 s;
    tun_sha1_init(&s);
    tun_sha1_update(&s, data, len);
    tun_sha1_final(&s, out);
}

void tun_hmac_sha1_init(struct tun_hmac_sha1 *h, const uint8_t *key, size_t keylen)
{
    uint8_t k[TUN_SHA1_BLOCK] = {0}, pad[TUN_SHA1_BLOCK];
    /* Keys longer than a block are hashed first (RFC 2104 §2). */
    if (keylen > TUN_SHA1_BLOCK)
        tun_sha1(key, keylen, k);
    else if (keylen > 0)
        memcpy(k, key, keylen);
    for (int i = 0; i < TUN_SHA1_BLOCK; i++)
        pad[i] = k[i] ^ 0x36;
    tun_sha1_init(&h->inner);
    tun_sha1_update(&h->inner, pad, sizeof(pad));
    for (int i = 0; i < TUN_SHA1_BLOCK; i++)
        pad[i] = k[i] ^ 0x5c;
    tun_sha1_init(&h->outer);
    tun_sha1_update(&h->outer, pad, sizeof(pad));
    sodium_memzero(k, sizeof(k));
    sodium_memzero(pad, sizeof(pad));
}

void tun_hmac_sha1_update(struct tun_hmac_sha1 *h, const void *data, size_t len)
{
    tun_sha1_update(&h->inner, data, len);
}

void tun_hmac_sha1_final(struct tun_hmac_sha1 *h, uint8_t out[TUN_SHA1_LEN])
{
    uint8_t inner[TUN_SHA1_LEN];
    tun_sha1_final(&h->inner, inner);
    tun_sha1_update(&h->outer, inner, sizeof(inner));
    tun_sha1_final(&h->outer, out);
    sodium_memzero(inner, sizeof(inner));
}

void tun_hmac_sha1(const uint8_t *key, size_t keylen, const void *data, size_t len,
                   uint8_t out[TUN_SHA1_LEN])
{
    struct tun_hmac_sha1 h;
    tun_hmac_sha1_init(&h, key, keylen);
    tun_hmac_sha1_update(&h, data, len);
    tun_hmac_sha1_final(&h, out);
}
