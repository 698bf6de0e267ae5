#include "nostr/nip44.h"
#include "util/base64.h"
#include "util/error.h"

#include <secp256k1_ecdh.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define SALT     "nip44-v2"
#define OKM_LEN  76 /* chacha key 32 + chacha nonce 12 + hmac key 32 */
#define OVERHEAD (1 + TUN_NIP44_NONCE_LEN + TUN_NIP44_MAC_LEN) /* version, nonce, mac */

/* HMAC-SHA256 over the concatenation of up to three pieces, with a key of any length (the
 * one-shot crypto_auth_hmacsha256() only takes 32-byte keys; HKDF-Extract's key is the
 * 8-byte salt). */
static int hmac3(uint8_t out[32], const uint8_t *key, size_t keylen, const uint8_t *a, size_t alen,
                 const uint8_t *b, size_t blen, const uint8_t *c, size_t clen)
{
    crypto_auth_hmacsha256_state st;
    int rc = crypto_auth_hmacsha256_init(&st, key, keylen);
    if (rc == 0 && alen)
        rc = crypto_auth_hmacsha256_update(&st, a, alen);
    if (rc == 0 && blen)
        rc = crypto_auth_hmacsha256_update(&st, b, blen);
    if (rc == 0 && clen)
        rc = crypto_auth_hmacsha256_update(&st, c, clen);
    if (rc == 0)
        rc = crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st); /* holds the keyed inner and outer hash states */
    return rc == 0 ? 0 : TUN_ECRYPTO;
}

/* secp256k1_ecdh() normally hashes the shared point; NIP-44 wants its bare x coordinate. */
static int copy_x(unsigned char *output, const unsigned char *x32, const unsigned char *y32,
                  void *data)
{
    (void)y32;
    (void)data;
    memcpy(output, x32, 32);
    return 1;
}

int tun_nip44_conversation_key(uint8_t conv[TUN_NIP44_KEY_LEN], const uint8_t sk[TUN_NOSTR_KEY_LEN],
                               const uint8_t pub[TUN_NOSTR_KEY_LEN])
{
    const secp256k1_context *c = tun_nostr_context();
    if (!c || !secp256k1_ec_seckey_verify(c, sk))
        return TUN_ECRYPTO;
    /* An x-only key stands for the point with even y. The other point with that x is its
     * negation, and x(a * -B) == x(a * B), so the choice cannot change the shared x. */
    uint8_t compressed[33];
    compressed[0] = 0x02;
    memcpy(compressed + 1, pub, TUN_NOSTR_KEY_LEN);
    secp256k1_pubkey point;
    if (!secp256k1_ec_pubkey_parse(c, &point, compressed, sizeof compressed))
        return TUN_ECRYPTO;
    uint8_t shared[32];
    int rc = TUN_ECRYPTO;
    if (secp256k1_ecdh(c, shared, &point, sk, copy_x, NULL))
        rc = hmac3(conv, (const uint8_t *)SALT, strlen(SALT), shared, sizeof shared, NULL, 0, NULL,
                   0);
    sodium_memzero(shared, sizeof shared);
    return rc;
}

int tun_nip44_message_keys(uint8_t chacha_key[TUN_NIP44_CHACHA_KEY_LEN],
                           uint8_t chacha_nonce[TUN_NIP44_CHACHA_NONCE_LEN],
                           uint8_t hmac_key[TUN_NIP44_HMAC_KEY_LEN],
                           const uint8_t conv[TUN_NIP44_KEY_LEN],
                           const uint8_t nonce[TUN_NIP44_NONCE_LEN])
{
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    /* HKDF-Expand (RFC 5869): T(i) = HMAC(PRK, T(i-1) || info || i); 76 bytes need three. */
    uint8_t okm[3 * 32];
    int rc = 0;
    for (uint8_t i = 1; i <= 3 && rc == 0; i++) {
        const uint8_t *prev = i > 1 ? okm + 32 * (i - 2) : NULL;
        rc = hmac3(okm + 32 * (i - 1), conv, TUN_NIP44_KEY_LEN, prev, prev ? 32 : 0, nonce,
                   TUN_NIP44_NONCE_LEN, &i, 1);
    }
    if (rc == 0) {
        memcpy(chacha_key, okm, TUN_NIP44_CHACHA_KEY_LEN);
        memcpy(chacha_nonce, okm + 32, TUN_NIP44_CHACHA_NONCE_LEN);
        memcpy(hmac_key, okm + 44, TUN_NIP44_HMAC_KEY_LEN);
    }
    sodium_memzero(okm, sizeof okm);
    return rc;
}

uint64_t tun_nip44_calc_padded_len(uint64_t n)
{
    if (n == 0 || n > (UINT64_C(1) << 62))
        return 0;
    if (n <= 32)
        return 32;
    uint64_t next_power = 1;
    while (next_power < n)
        next_power <<= 1;
    uint64_t chunk = next_power <= 256 ? 32 : next_power / 8;
    return chunk * ((n - 1) / chunk + 1);
}

size_t tun_nip44_payload_len(size_t n)
{
    if (n < TUN_NIP44_MIN_PLAINTEXT || n > TUN_NIP44_MAX_PLAINTEXT)
        return 0;
    size_t raw = OVERHEAD + 2 + (size_t)tun_nip44_calc_padded_len(n);
    return sodium_base64_ENCODED_LEN(raw, sodium_base64_VARIANT_ORIGINAL) - 1;
}

/* Derive the message keys and run ChaCha20 over `buf` in place. */
static int keystream_xor(uint8_t hmac_key[TUN_NIP44_HMAC_KEY_LEN], uint8_t *buf, size_t len,
                         const uint8_t conv[TUN_NIP44_KEY_LEN],
                         const uint8_t nonce[TUN_NIP44_NONCE_LEN])
{
    uint8_t ck[TUN_NIP44_CHACHA_KEY_LEN], cn[TUN_NIP44_CHACHA_NONCE_LEN];
    int rc = tun_nip44_message_keys(ck, cn, hmac_key, conv, nonce);
    if (rc == 0 && crypto_stream_chacha20_ietf_xor_ic(buf, buf, len, cn, 0, ck) != 0)
        rc = TUN_ECRYPTO;
    sodium_memzero(ck, sizeof ck);
    sodium_memzero(cn, sizeof cn);
    return rc;
}

int tun_nip44_encrypt(char *out, size_t cap, const uint8_t conv[TUN_NIP44_KEY_LEN],
                      const uint8_t *pt, size_t n, const uint8_t nonce[TUN_NIP44_NONCE_LEN])
{
    size_t payload_len = tun_nip44_payload_len(n);
    if (!payload_len || !pt)
        return TUN_ELENGTH;
    if (!out || cap < payload_len + 1)
        return TUN_ETOOBIG;
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    size_t padded = 2 + (size_t)tun_nip44_calc_padded_len(n);
    size_t total = OVERHEAD + padded;
    uint8_t *buf = malloc(total);
    if (!buf)
        return TUN_ENOMEM;
    uint8_t *nonce_at = buf + 1, *ct = buf + 1 + TUN_NIP44_NONCE_LEN, *mac = ct + padded;
    buf[0] = TUN_NIP44_VERSION;
    if (nonce)
        memcpy(nonce_at, nonce, TUN_NIP44_NONCE_LEN);
    else
        randombytes_buf(nonce_at, TUN_NIP44_NONCE_LEN);
    ct[0] = (uint8_t)(n >> 8);
    ct[1] = (uint8_t)n;
    memcpy(ct + 2, pt, n);
    memset(ct + 2 + n, 0, padded - 2 - n);

    uint8_t hk[TUN_NIP44_HMAC_KEY_LEN];
    int rc = keystream_xor(hk, ct, padded, conv, nonce_at);
    if (rc == 0)
        rc = hmac3(mac, hk, sizeof hk, nonce_at, TUN_NIP44_NONCE_LEN, ct, padded, NULL, 0);
    if (rc == 0) {
        sodium_bin2base64(out, cap, buf, total, sodium_base64_VARIANT_ORIGINAL);
        rc = (int)payload_len;
    }
    sodium_memzero(hk, sizeof hk);
    sodium_memzero(buf, total); /* held the padded plaintext before encryption */
    free(buf);
    return rc;
}

int tun_nip44_decrypt(uint8_t *out, size_t cap, const uint8_t conv[TUN_NIP44_KEY_LEN],
                      const char *payload, size_t len, const char **reason)
{
    const char *why = NULL;
    int rc;
    uint8_t *buf = NULL;
    size_t buf_cap = 0, dlen = 0;
    uint8_t hk[TUN_NIP44_HMAC_KEY_LEN], want[TUN_NIP44_MAC_LEN];

    /* '#' cannot start base64: the spec reserves it to flag payloads of a future,
     * non-base64 version, which deserve a clearer message than "bad base64". */
    if (len > 0 && payload[0] == '#') {
        rc = TUN_EPROTO;
        why = "unknown encryption version (the payload starts with '#')";
        goto out;
    }
    if (len < TUN_NIP44_MIN_PAYLOAD || len > TUN_NIP44_MAX_PAYLOAD) {
        rc = TUN_ELENGTH;
        why = "payload must be 132 to 87472 characters long";
        goto out;
    }
    if (sodium_init() < 0) {
        rc = TUN_ECRYPTO;
        why = "libsodium is not available";
        goto out;
    }
    buf_cap = len / 4 * 3;
    buf = malloc(buf_cap);
    if (!buf) {
        rc = TUN_ENOMEM;
        why = "out of memory";
        goto out;
    }
    if (tun_base64_decode(buf, buf_cap, &dlen, payload, len) != 0) {
        rc = TUN_EFORMAT;
        why = "payload is not valid base64";
        goto out;
    }
    if (dlen < TUN_NIP44_MIN_DECODED || dlen > TUN_NIP44_MAX_DECODED) {
        rc = TUN_ELENGTH;
        why = "payload must decode to 99 to 65603 bytes";
        goto out;
    }
    if (buf[0] != TUN_NIP44_VERSION) {
        rc = TUN_EPROTO;
        why = "unknown encryption version (only version 2 is supported)";
        goto out;
    }
    const uint8_t *nonce = buf + 1;
    uint8_t *ct = buf + 1 + TUN_NIP44_NONCE_LEN;
    size_t ct_len = dlen - OVERHEAD;
    const uint8_t *mac = ct + ct_len;

    /* Authenticate before decrypting; the comparison must not reveal how many leading bytes
     * of a forged MAC were right. */
    uint8_t ck[TUN_NIP44_CHACHA_KEY_LEN], cn[TUN_NIP44_CHACHA_NONCE_LEN];
    rc = tun_nip44_message_keys(ck, cn, hk, conv, nonce);
    if (rc == 0)
        rc = hmac3(want, hk, sizeof hk, nonce, TUN_NIP44_NONCE_LEN, ct, ct_len, NULL, 0);
    if (rc == 0 && sodium_memcmp(want, mac, TUN_NIP44_MAC_LEN) != 0) {
        rc = TUN_ECHECKSUM;
        why = "MAC does not match (wrong key, or the payload was altered)";
    } else if (rc == 0 && crypto_stream_chacha20_ietf_xor_ic(ct, ct, ct_len, cn, 0, ck) != 0) {
        rc = TUN_ECRYPTO;
    }
    sodium_memzero(ck, sizeof ck);
    sodium_memzero(cn, sizeof cn);
    if (rc < 0) {
        if (!why)
            why = "decryption failed in libsodium";
        goto out;
    }

    size_t n = (size_t)ct[0] << 8 | ct[1];
    if (n < TUN_NIP44_MIN_PLAINTEXT || ct_len != 2 + tun_nip44_calc_padded_len(n)) {
        rc = TUN_ERANGE;
        why = "invalid padding";
        goto out;
    }
    if (!out || cap < n) {
        rc = TUN_ETOOBIG;
        why = "output buffer too small";
        goto out;
    }
    memcpy(out, ct + 2, n);
    rc = (int)n;
out:
    sodium_memzero(hk, sizeof hk);
    sodium_memzero(want, sizeof want);
    if (buf) {
        sodium_memzero(buf, buf_cap);
        free(buf);
    }
    if (reason)
        *reason = why;
    return rc;
}
