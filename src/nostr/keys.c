#include "nostr/keys.h"
#include "util/bech32.h"
#include "util/error.h"

#include <secp256k1_extrakeys.h>
#include <sodium.h>
#include <string.h>

static secp256k1_context *ctx;

const secp256k1_context *tun_nostr_context(void)
{
    if (ctx)
        return ctx;
    if (sodium_init() < 0)
        return NULL;
    secp256k1_context *c = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    if (!c)
        return NULL;
    /* Randomizing blinds the secret-dependent computations (keypair creation, signing) against
     * timing and power side channels; it never changes results. */
    unsigned char seed[32];
    randombytes_buf(seed, sizeof seed);
    int ok = secp256k1_context_randomize(c, seed);
    sodium_memzero(seed, sizeof seed);
    if (!ok) {
        secp256k1_context_destroy(c);
        return NULL;
    }
    ctx = c;
    return ctx;
}

int tun_nostr_secret_check(const uint8_t sk[TUN_NOSTR_KEY_LEN])
{
    const secp256k1_context *c = tun_nostr_context();
    if (!c || !secp256k1_ec_seckey_verify(c, sk))
        return TUN_ECRYPTO;
    return 0;
}

int tun_nostr_secret_generate(uint8_t sk[TUN_NOSTR_KEY_LEN])
{
    const secp256k1_context *c = tun_nostr_context();
    if (!c)
        return TUN_ECRYPTO;
    /* A random 32-byte string is invalid with probability about 2^-128; the loop is there for
     * correctness, not because it is ever expected to run twice. */
    do {
        randombytes_buf(sk, TUN_NOSTR_KEY_LEN);
    } while (!secp256k1_ec_seckey_verify(c, sk));
    return 0;
}

int tun_nostr_public(uint8_t pub[TUN_NOSTR_KEY_LEN], const uint8_t sk[TUN_NOSTR_KEY_LEN])
{
    const secp256k1_context *c = tun_nostr_context();
    if (!c)
        return TUN_ECRYPTO;
    secp256k1_keypair kp;
    secp256k1_xonly_pubkey xonly;
    int rc = TUN_ECRYPTO;
    if (secp256k1_keypair_create(c, &kp, sk) && secp256k1_keypair_xonly_pub(c, &xonly, NULL, &kp) &&
        secp256k1_xonly_pubkey_serialize(c, pub, &xonly))
        rc = 0;
    sodium_memzero(&kp, sizeof kp); /* the keypair holds the secret key */
    return rc;
}

int tun_nostr_public_check(const uint8_t pub[TUN_NOSTR_KEY_LEN])
{
    const secp256k1_context *c = tun_nostr_context();
    secp256k1_xonly_pubkey xonly;
    if (!c || !secp256k1_xonly_pubkey_parse(c, &xonly, pub))
        return TUN_ECRYPTO;
    return 0;
}

static int encode(char out[TUN_NOSTR_BECH32_LEN + 1], const char *hrp, const uint8_t key[32])
{
    /* 32 bytes under a 4-letter HRP always make 63 characters: the encoder cannot fail. */
    return tun_bech32_encode_bytes(out, TUN_NOSTR_BECH32_LEN + 1, hrp, key, TUN_NOSTR_KEY_LEN);
}

int tun_nostr_nsec_encode(char out[TUN_NOSTR_BECH32_LEN + 1], const uint8_t sk[TUN_NOSTR_KEY_LEN])
{
    return encode(out, TUN_NOSTR_NSEC_HRP, sk);
}

int tun_nostr_npub_encode(char out[TUN_NOSTR_BECH32_LEN + 1], const uint8_t pub[TUN_NOSTR_KEY_LEN])
{
    return encode(out, TUN_NOSTR_NPUB_HRP, pub);
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

/* Decode either text form into 32 bytes, without judging the key itself. */
static int decode_key(uint8_t key[TUN_NOSTR_KEY_LEN], const char *want_hrp, const char *s,
                      size_t len, size_t *bad_pos)
{
    if (len == TUN_NOSTR_HEX_LEN) {
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
        return 0;
    }
    char hrp[TUN_BECH32_MAX_LEN + 1];
    uint8_t data5[TUN_BECH32_MAX_LEN];
    int n5 = tun_bech32_decode(hrp, sizeof hrp, data5, sizeof data5, s, len, bad_pos);
    if (n5 < 0)
        return n5;
    if (strcmp(hrp, want_hrp) != 0)
        return TUN_EPROTO;
    /* 32 bytes are 256 bits: 52 five-bit groups, the last holding 4 bits of padding. */
    if (n5 != 52)
        return TUN_ELENGTH;
    int n = tun_bech32_convert_bits(key, TUN_NOSTR_KEY_LEN, data5, (size_t)n5, 5, 8, 0);
    if (n != TUN_NOSTR_KEY_LEN) {
        if (bad_pos)
            *bad_pos = len - TUN_BECH32_CHECKSUM_LEN - 1;
        return TUN_EFORMAT;
    }
    return 0;
}

int tun_nostr_nsec_parse(uint8_t sk[TUN_NOSTR_KEY_LEN], const char *s, size_t len, size_t *bad_pos)
{
    uint8_t key[TUN_NOSTR_KEY_LEN];
    int rc = decode_key(key, TUN_NOSTR_NSEC_HRP, s, len, bad_pos);
    if (rc == 0)
        rc = tun_nostr_secret_check(key);
    if (rc == 0)
        memcpy(sk, key, sizeof key);
    sodium_memzero(key, sizeof key);
    return rc;
}

int tun_nostr_npub_parse(uint8_t pub[TUN_NOSTR_KEY_LEN], const char *s, size_t len, size_t *bad_pos)
{
    uint8_t key[TUN_NOSTR_KEY_LEN];
    int rc = decode_key(key, TUN_NOSTR_NPUB_HRP, s, len, bad_pos);
    if (rc == 0)
        rc = tun_nostr_public_check(key);
    if (rc == 0)
        memcpy(pub, key, sizeof key);
    return rc;
}
