#include "identity/identity.h"
#include "util/base32.h"
#include "util/error.h"

#include <sodium.h>
#include <string.h>

int tun_identity_generate(uint8_t secret[TUN_IDENTITY_SECRET_LEN])
{
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    randombytes_buf(secret, TUN_IDENTITY_SECRET_LEN);
    return 0;
}

int tun_identity_public(uint8_t pub[TUN_IDENTITY_PUBLIC_LEN],
                        const uint8_t secret[TUN_IDENTITY_SECRET_LEN])
{
    unsigned char sk[crypto_sign_SECRETKEYBYTES];
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    int rc = crypto_sign_seed_keypair(pk, sk, secret);
    sodium_memzero(sk, sizeof sk);
    if (rc != 0)
        return TUN_ECRYPTO;
    memcpy(pub, pk, TUN_IDENTITY_PUBLIC_LEN);
    return 0;
}

int tun_endpoint_id_format(char out[TUN_ENDPOINT_ID_LEN + 1],
                           const uint8_t pub[TUN_IDENTITY_PUBLIC_LEN])
{
    /* 32 bytes always fit the 53-byte buffer, so the encoder cannot fail here. */
    return tun_base32_encode(out, TUN_ENDPOINT_ID_LEN + 1, pub, TUN_IDENTITY_PUBLIC_LEN);
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int tun_endpoint_id_parse(uint8_t pub[TUN_IDENTITY_PUBLIC_LEN], const char *s, size_t len,
                          size_t *bad_pos)
{
    uint8_t key[TUN_IDENTITY_PUBLIC_LEN];
    if (len == TUN_ENDPOINT_ID_LEN) {
        int n = tun_base32_decode(key, sizeof key, s, len, bad_pos);
        if (n < 0)
            return n;
    } else if (len == TUN_ENDPOINT_ID_HEX_LEN) {
        for (size_t i = 0; i < len; i += 2) {
            int hi = hex_value((unsigned char)s[i]);
            int lo = hex_value((unsigned char)s[i + 1]);
            if (hi < 0 || lo < 0) {
                if (bad_pos)
                    *bad_pos = hi < 0 ? i : i + 1;
                return TUN_EFORMAT;
            }
            key[i / 2] = (uint8_t)(hi << 4 | lo);
        }
    } else {
        return TUN_ELENGTH;
    }
    /* Rejects non-points, non-canonical encodings and small-order points: none of them can
     * come from crypto_sign_seed_keypair(), so they are typos or garbage. */
    if (sodium_init() < 0 || !crypto_core_ed25519_is_valid_point(key))
        return TUN_ECRYPTO;
    memcpy(pub, key, sizeof key);
    return 0;
}
