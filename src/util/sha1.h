/*
 * SHA-1 and HMAC-SHA1 (RFC 3174, RFC 2104). libsodium has no SHA-1, and two protocols we speak
 * require it: STUN's MESSAGE-INTEGRITY (RFC 8489 §14.5, HMAC-SHA1) and the WebSocket opening
 * handshake (RFC 6455 §4.2.2, Sec-WebSocket-Accept). Do not use for anything new: SHA-1 is
 * broken for collision resistance (HMAC-SHA1 as a MAC, and the handshake's use as a
 * non-security nonce echo, are still sound).
 */
#ifndef TUN_UTIL_SHA1_H
#define TUN_UTIL_SHA1_H

#include <stddef.h>
#include <stdint.h>

#define TUN_SHA1_LEN   20
#define TUN_SHA1_BLOCK 64

struct tun_sha1 {
    uint32_t h[5];
    uint64_t total; /* bytes fed so far */
    uint8_t block[TUN_SHA1_BLOCK];
    size_t used; /* bytes waiting in block */
};

void tun_sha1_init(struct tun_sha1 *s);
void tun_sha1_update(struct tun_sha1 *s, const void *data, size_t len);
void tun_sha1_final(struct tun_sha1 *s, uint8_t out[TUN_SHA1_LEN]);
void tun_sha1(const void *data, size_t len, uint8_t out[TUN_SHA1_LEN]);

/* Incremental HMAC-SHA1, so a STUN header can be hashed with a rewritten length field. */
struct tun_hmac_sha1 {
    struct tun_sha1 inner, outer;
};

void tun_hmac_sha1_init(struct tun_hmac_sha1 *h, const uint8_t *key, size_t keylen);
void tun_hmac_sha1_update(struct tun_hmac_sha1 *h, const void *data, size_t len);
void tun_hmac_sha1_final(struct tun_hmac_sha1 *h, uint8_t out[TUN_SHA1_LEN]);
void tun_hmac_sha1(const uint8_t *key, size_t keylen, const void *data, size_t len,
                   uint8_t out[TUN_SHA1_LEN]);

#endif
