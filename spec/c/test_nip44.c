/* nostr/nip44: a few of the official NIP-44 v2 vectors (paulmillr/nip44; all of them run in
 * spec/nip44_spec.lua), symmetry, round trips at the length limits, tampering, and every
 * decrypt error. */
#include "nostr/keys.h"
#include "nostr/nip44.h"
#include "util/error.h"

#include "test.h"

#include <sodium.h>
#include <stdlib.h>

static void unhex(uint8_t *out, size_t n, const char *h)
{
    size_t got = 0;
    CHECK(sodium_hex2bin(out, n, h, strlen(h), NULL, &got, NULL) == 0);
    CHECK_INT_EQ(got, n);
}

static void test_conversation_key(void)
{
    uint8_t sk[32], pub[32], conv[32], want[32];
    unhex(sk, 32, "315e59ff51cb9209768cf7da80791ddcaae56ac9775eb25b6dee1234bc5d2268");
    unhex(pub, 32, "c2f9d9948dc8c7c38321e4b85c8558872eafa0641cd269db76848a6073e69133");
    unhex(want, 32, "3dfef0ce2a4d80a25e7a328accf73448ef67096f65f79588e358d9a0eb9013f1");
    CHECK_INT_EQ(tun_nip44_conversation_key(conv, sk, pub), 0);
    CHECK_MEM_EQ(conv, want, 32);

    unhex(sk, 32, "a1e37752c9fdc1273be53f68c5f74be7c8905728e8de75800b94262f9497c86e");
    unhex(pub, 32, "03bb7947065dde12ba991ea045132581d0954f042c84e06d8c00066e23c1a800");
    unhex(want, 32, "4d14f36e81b8452128da64fe6f1eae873baae2f444b02c950b90e43553f2178b");
    CHECK_INT_EQ(tun_nip44_conversation_key(conv, sk, pub), 0);
    CHECK_MEM_EQ(conv, want, 32);

    /* Symmetry, with keys 1 and 2 (encrypt_decrypt vector 1). */
    uint8_t a[32] = {0}, b[32] = {0}, pa[32], pb[32], ab[32], ba[32];
    a[31] = 1;
    b[31] = 2;
    CHECK_INT_EQ(tun_nostr_public(pa, a), 0);
    CHECK_INT_EQ(tun_nostr_public(pb, b), 0);
    CHECK_INT_EQ(tun_nip44_conversation_key(ab, a, pb), 0);
    CHECK_INT_EQ(tun_nip44_conversation_key(ba, b, pa), 0);
    CHECK_MEM_EQ(ab, ba, 32);
    unhex(want, 32, "c41c775356fd92eadc63ff5a0dc1da211b268cbea22316767095b2871ea1412d");
    CHECK_MEM_EQ(ab, want, 32);

    /* Invalid secrets (0, n, above n) and public keys off the curve. */
    uint8_t good_pub[32];
    unhex(good_pub, 32, "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef");
    memset(sk, 0, 32);
    CHECK_INT_EQ(tun_nip44_conversation_key(conv, sk, good_pub), TUN_ECRYPTO);
    unhex(sk, 32, "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
    CHECK_INT_EQ(tun_nip44_conversation_key(conv, sk, good_pub), TUN_ECRYPTO);
    memset(sk, 0xff, 32);
    CHECK_INT_EQ(tun_nip44_conversation_key(conv, sk, good_pub), TUN_ECRYPTO);
    unhex(sk, 32, "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20");
    memset(pub, 0, 32); /* order 3 on the twist */
    CHECK_INT_EQ(tun_nip44_conversation_key(conv, sk, pub), TUN_ECRYPTO);
    unhex(pub, 32, "eb1f7200aecaa86682376fb1c13cd12b732221e774f553b0a0857f88fa20f86d");
    CHECK_INT_EQ(tun_nip44_conversation_key(conv, sk, pub), TUN_ECRYPTO);
    memset(pub, 0xff, 32);
    CHECK_INT_EQ(tun_nip44_conversation_key(conv, sk, pub), TUN_ECRYPTO);
}

static void test_message_keys(void)
{
    uint8_t conv[32], nonce[32], ck[32], cn[12], hk[32], want[32];
    unhex(conv, 32, "a1a3d60f3470a8612633924e91febf96dc5366ce130f658b1f0fc652c20b3b54");
    unhex(nonce, 32, "e1e6f880560d6d149ed83dcc7e5861ee62a5ee051f7fde9975fe5d25d2a02d72");
    CHECK_INT_EQ(tun_nip44_message_keys(ck, cn, hk, conv, nonce), 0);
    unhex(want, 32, "f145f3bed47cb70dbeaac07f3a3fe683e822b3715edb7c4fe310829014ce7d76");
    CHECK_MEM_EQ(ck, want, 32);
    unhex(want, 12, "c4ad129bb01180c0933a160c");
    CHECK_MEM_EQ(cn, want, 12);
    unhex(want, 32, "027c1db445f05e2eee864a0975b0ddef5b7110583c8c192de3732571ca5838c4");
    CHECK_MEM_EQ(hk, want, 32);
}

static void test_padding(void)
{
    static const uint64_t cases[][2] = {
        {16, 32},   {32, 32},   {33, 64},   {37, 64},    {45, 64},     {49, 64},
        {64, 64},   {65, 96},   {100, 128}, {111, 128},  {200, 224},   {250, 256},
        {320, 320}, {383, 384}, {384, 384}, {400, 448},  {500, 512},   {512, 512},
        {515, 640}, {700, 768}, {800, 896}, {900, 1024}, {1020, 1024}, {65536, 65536},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK_INT_EQ(tun_nip44_calc_padded_len(cases[i][0]), cases[i][1]);
    CHECK_INT_EQ(tun_nip44_calc_padded_len(0), 0);
    CHECK_INT_EQ(tun_nip44_calc_padded_len(1), 32);
    CHECK_INT_EQ(tun_nip44_calc_padded_len(65535), 65536);

    /* Payload sizes: 1 + 32 + 2 + 32 + 32 = 99 bytes -> 132 characters, up to 65603 -> 87472. */
    CHECK_INT_EQ(tun_nip44_payload_len(0), 0);
    CHECK_INT_EQ(tun_nip44_payload_len(1), TUN_NIP44_MIN_PAYLOAD);
    CHECK_INT_EQ(tun_nip44_payload_len(32), TUN_NIP44_MIN_PAYLOAD);
    CHECK_INT_EQ(tun_nip44_payload_len(33), 176);
    CHECK_INT_EQ(tun_nip44_payload_len(65535), TUN_NIP44_MAX_PAYLOAD);
    CHECK_INT_EQ(tun_nip44_payload_len(65536), 0);
}

struct vector {
    const char *conv, *nonce, *plaintext, *payload;
};

static const struct vector valid[] = {
    {"c41c775356fd92eadc63ff5a0dc1da211b268cbea22316767095b2871ea1412d",
     "0000000000000000000000000000000000000000000000000000000000000001", "a",
     "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABee0G5VSK0/9YypIObAtDKfYEAjD35uVkHyB0F4DwrcNaCXlCW"
     "ZKaArsGrY6M9wnuTMxWfp1RTN9Xga8no+kF5Vsb"},
    {"3e2b52a63be47d34fe0a80e34e73d436d6963bc8f39827f327057a9986c20a45",
     "b635236c42db20f021bb8d1cdff5ca75dd1a0cc72ea742ad750f33010b24f73b",
     "\350\241\250\343\203\235\343\201\202A\351\267\227\305\222\303\251\357\274\242\351\200\215\303"
     "\234\303\237\302\252\304\205\303\261\344\270\202\343\220\200\360\240\200\200",
     "ArY1I2xC2yDwIbuNHN/1ynXdGgzHLqdCrXUPMwELJPc7s7JqlCMJBAIIjfkpHReBPXeoMCyuClwgbT419jUWU1PwaNl4F"
     "EQYKCDKVJz+97Mp3K+Q2YGa77B6gpxB/lr1QgoqpDf7wDVrDmOqGoiPjWDqy8KzLueKDcm9BVP8xeTJIxs="},
};

static void test_vectors(void)
{
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        const struct vector *v = &valid[i];
        uint8_t conv[32], nonce[32];
        unhex(conv, 32, v->conv);
        unhex(nonce, 32, v->nonce);
        size_t n = strlen(v->plaintext), plen = strlen(v->payload);
        char payload[256];
        CHECK_INT_EQ(tun_nip44_payload_len(n), plen);
        CHECK_INT_EQ(tun_nip44_encrypt(payload, sizeof payload, conv, (const uint8_t *)v->plaintext,
                                       n, nonce),
                     plen);
        CHECK_STR_EQ(payload, v->payload);

        uint8_t pt[256];
        const char *why = "unset";
        CHECK_INT_EQ(tun_nip44_decrypt(pt, sizeof pt, conv, v->payload, plen, &why), n);
        CHECK_MEM_EQ(pt, v->plaintext, n);
        CHECK(why == NULL);
        /* Exactly the plaintext's size is enough room; one byte less is not. */
        CHECK_INT_EQ(tun_nip44_decrypt(pt, n, conv, v->payload, plen, NULL), n);
        CHECK_INT_EQ(tun_nip44_decrypt(pt, n - 1, conv, v->payload, plen, &why), TUN_ETOOBIG);
        /* A byte above 0x7f in place of a '/' (libsodium 1.0.18 alone would read it as '/'). */
        char copy[256];
        memcpy(copy, v->payload, plen + 1);
        char *slash = strchr(copy, '/');
        CHECK(slash != NULL);
        if (slash) {
            *slash = (char)0xff;
            CHECK_INT_EQ(tun_nip44_decrypt(pt, sizeof pt, conv, copy, plen, &why), TUN_EFORMAT);
        }
        /* The payload buffer must hold the NUL too. */
        CHECK_INT_EQ(
            tun_nip44_encrypt(payload, plen, conv, (const uint8_t *)v->plaintext, n, nonce),
            TUN_ETOOBIG);
    }
}

static void check_decrypt_fails(const char *conv_hex, const char *payload, int code,
                                const char *reason)
{
    uint8_t conv[32], pt[70000];
    unhex(conv, 32, conv_hex);
    const char *why = NULL;
    CHECK_INT_EQ(tun_nip44_decrypt(pt, sizeof pt, conv, payload, strlen(payload), &why), code);
    CHECK(why != NULL);
    if (why)
        CHECK_STR_EQ(why, reason);
}

static void test_invalid(void)
{
    check_decrypt_fails(
        "ca2527a037347b91bea0c8a30fc8d9600ffd81ec00038671e3a0f0cb0fc9f642",
        "#Atqupco0WyaOW2IGDKcshwxI9xO8HgD/P8Ddt46CbxDbrhdG8VmJdU0MIDf06CUvEvdnr1cp1fiMtlM/"
        "GrE92xAc1K5odTpCzUB+mjXgbaqtntBUbTToSUoT0ovrlPwzGjyp",
        TUN_EPROTO, "unknown encryption version (the payload starts with '#')");
    check_decrypt_fails("36f04e558af246352dcf73b692fbd3646a2207bd8abd4b1cd26b234db84d9481",
                        "AK1AjUvoYW3IS7C/BGRUoqEC7ayTfDUgnEPNeWTF/"
                        "reBZFaha6EAIRueE9D1B1RuoiuFScC0Q94yjIuxZD3JStQtE8JMNa"
                        "cWFs9rlYP+ZydtHhRucp+lxfdvFlaGV/sQlqZz",
                        TUN_EPROTO, "unknown encryption version (only version 2 is supported)");
    check_decrypt_fails(
        "cff7bd6a3e29a450fd27f6c125d5edeb0987c475fd1e8d97591e0d4d8a89763c",
        "Agn/"
        "l3ULCEAS4V7LhGFM6IGA17jsDUaFCKhrbXDANholyySBfeh+EN8wNB9gaLlg4j6wdBYh+3oK+mnxWu3NKRbSvQAAA"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        TUN_ECHECKSUM, "MAC does not match (wrong key, or the payload was altered)");
    check_decrypt_fails("5254827d29177622d40a7b67cad014fe7137700c3c523903ebbe3e1b74d40214",
                        "Anq2XbuLvCuONcr7V0UxTh8FAyWoZNEdBHXvdbNmDZHB573MI7R7rrTYftpqmvUpahmBC2sngm"
                        "I14/L0HjOZ7lWGJlzdh6"
                        "luiOnGPc46cGxf08MRC4CIuxx3i2Lm0KqgJ7vA",
                        TUN_ERANGE, "invalid padding");
    const char *conv = "5cd2d13b9e355aeb2452afbd3786870dbeecb9d355b12cb0a3b6e9da5744cd35";
    check_decrypt_fails(conv, "", TUN_ELENGTH, "payload must be 132 to 87472 characters long");
    check_decrypt_fails(conv, "Ag==", TUN_ELENGTH, "payload must be 132 to 87472 characters long");

    /* 132 characters that are not base64, and 132 base64 characters ending in '=' (98 bytes). */
    char text[TUN_NIP44_MAX_PAYLOAD + 2];
    memset(text, 'A', 132);
    text[132] = '\0';
    text[7] = '!';
    check_decrypt_fails(conv, text, TUN_EFORMAT, "payload is not valid base64");
    text[7] = 'A';
    text[131] = '=';
    check_decrypt_fails(conv, text, TUN_ELENGTH, "payload must decode to 99 to 65603 bytes");
    /* Trailing garbage after the padding, and a missing pad. */
    memset(text, 'A', 136);
    text[130] = '=';
    text[131] = '=';
    text[136] = '\0';
    check_decrypt_fails(conv, text, TUN_EFORMAT, "payload is not valid base64");
    memset(text, 'A', 133);
    text[133] = '\0';
    check_decrypt_fails(conv, text, TUN_EFORMAT, "payload is not valid base64");
    /* One character over the maximum. */
    memset(text, 'A', TUN_NIP44_MAX_PAYLOAD + 1);
    text[TUN_NIP44_MAX_PAYLOAD + 1] = '\0';
    check_decrypt_fails(conv, text, TUN_ELENGTH, "payload must be 132 to 87472 characters long");

    /* Plaintext lengths. */
    uint8_t key[32] = {1}, *big = calloc(1, 65536);
    char out[TUN_NIP44_MAX_PAYLOAD + 1];
    CHECK(big != NULL);
    CHECK_INT_EQ(tun_nip44_encrypt(out, sizeof out, key, big, 0, NULL), TUN_ELENGTH);
    CHECK_INT_EQ(tun_nip44_encrypt(out, sizeof out, key, big, 65536, NULL), TUN_ELENGTH);
    free(big);
}

/* Random keys and nonces, lengths at every padding edge, and any changed payload character
 * rejected. */
static void test_round_trips(void)
{
    static const size_t lengths[] = {1, 2, 31, 32, 33, 64, 65, 256, 257, 1000, 65534, 65535};
    uint8_t *pt = malloc(65535), *back = malloc(65535), conv[32], other[32];
    char *payload = malloc(TUN_NIP44_MAX_PAYLOAD + 1), *prev = malloc(TUN_NIP44_MAX_PAYLOAD + 1);
    CHECK(pt && back && payload && prev);
    randombytes_buf(conv, sizeof conv);
    memcpy(other, conv, 32);
    other[0] ^= 1;
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        size_t n = lengths[i];
        randombytes_buf(pt, n);
        int len = tun_nip44_encrypt(payload, TUN_NIP44_MAX_PAYLOAD + 1, conv, pt, n, NULL);
        CHECK_INT_EQ(len, tun_nip44_payload_len(n));
        CHECK_INT_EQ(strlen(payload), len);
        CHECK_INT_EQ(tun_nip44_decrypt(back, 65535, conv, payload, (size_t)len, NULL), n);
        CHECK_MEM_EQ(back, pt, n);
        /* A fresh nonce each time: the same plaintext encrypts differently. */
        CHECK_INT_EQ(tun_nip44_encrypt(prev, TUN_NIP44_MAX_PAYLOAD + 1, conv, pt, n, NULL), len);
        CHECK(strcmp(prev, payload) != 0);
        /* The wrong key fails authentication. */
        CHECK_INT_EQ(tun_nip44_decrypt(back, 65535, other, payload, (size_t)len, NULL),
                     TUN_ECHECKSUM);
        /* Changing one character of the nonce, ciphertext or MAC (never the first, the
         * version, nor the padding characters at the end) must fail. */
        size_t positions[] = {4, 44, 50, (size_t)len / 2, (size_t)len - 5};
        for (size_t k = 0; k < sizeof positions / sizeof positions[0]; k++) {
            size_t p = positions[k];
            char c = payload[p];
            payload[p] = c == 'A' ? 'B' : 'A';
            CHECK_INT_EQ(tun_nip44_decrypt(back, 65535, conv, payload, (size_t)len, NULL),
                         TUN_ECHECKSUM);
            payload[p] = c;
        }
    }
    free(pt);
    free(back);
    free(payload);
    free(prev);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    test_conversation_key();
    test_message_keys();
    test_padding();
    test_vectors();
    test_invalid();
    test_round_trips();
    return TEST_DONE();
}
