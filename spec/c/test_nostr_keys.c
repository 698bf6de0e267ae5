/* nostr/keys: NIP-19 vectors, key derivation checked against independently computed values,
 * text forms in both directions and every parse error. */
#include "nostr/keys.h"
#include "util/bech32.h"
#include "util/error.h"

#include "test.h"

#include <sodium.h>

static const char NSEC[] = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5";
static const char NSEC_HEX[] = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa";
static const char NPUB[] = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";
static const char NPUB_HEX[] = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e";

static void hex(uint8_t *out, const char *h)
{
    CHECK(sodium_hex2bin(out, 32, h, strlen(h), NULL, NULL, NULL) == 0);
}

static void test_nip19_vectors(void)
{
    uint8_t sk[32], pub[32], want_sk[32], want_pub[32];
    hex(want_sk, NSEC_HEX);
    hex(want_pub, NPUB_HEX);

    CHECK_INT_EQ(tun_nostr_nsec_parse(sk, NSEC, strlen(NSEC), NULL), 0);
    CHECK_MEM_EQ(sk, want_sk, 32);
    CHECK_INT_EQ(tun_nostr_npub_parse(pub, NPUB, strlen(NPUB), NULL), 0);
    CHECK_MEM_EQ(pub, want_pub, 32);

    char text[TUN_NOSTR_BECH32_LEN + 1];
    CHECK_INT_EQ(tun_nostr_nsec_encode(text, want_sk), TUN_NOSTR_BECH32_LEN);
    CHECK_STR_EQ(text, NSEC);
    CHECK_INT_EQ(tun_nostr_npub_encode(text, want_pub), TUN_NOSTR_BECH32_LEN);
    CHECK_STR_EQ(text, NPUB);

    /* The two NIP-19 examples are one key pair: the x coordinate of sk*G, computed separately
     * with plain big-integer arithmetic in Python, is the npub's key. */
    uint8_t derived[32];
    CHECK_INT_EQ(tun_nostr_public(derived, want_sk), 0);
    CHECK_MEM_EQ(derived, want_pub, 32);

    /* Hex forms, both cases. */
    CHECK_INT_EQ(tun_nostr_nsec_parse(sk, NSEC_HEX, 64, NULL), 0);
    CHECK_MEM_EQ(sk, want_sk, 32);
    CHECK_INT_EQ(
        tun_nostr_npub_parse(
            pub, "7E7E9C42A91BFEF19FA929E5FDA1B72E0EBC1A4C1141673E2794234D86ADDF4E", 64, NULL),
        0);
    CHECK_MEM_EQ(pub, want_pub, 32);
    /* Uppercase bech32 is valid too (BIP-173), mixed case is not. */
    char upper[TUN_NOSTR_BECH32_LEN + 1];
    for (size_t i = 0; i <= TUN_NOSTR_BECH32_LEN; i++)
        upper[i] = (NPUB[i] >= 'a' && NPUB[i] <= 'z') ? (char)(NPUB[i] - 32) : NPUB[i];
    CHECK_INT_EQ(tun_nostr_npub_parse(pub, upper, TUN_NOSTR_BECH32_LEN, NULL), 0);
    CHECK_MEM_EQ(pub, want_pub, 32);
}

static void test_bip340_pubkeys(void)
{
    /* BIP-340 test vectors 0 and 1 (secret key -> public key), also recomputed in Python. */
    static const char *const vec[][2] = {
        {"0000000000000000000000000000000000000000000000000000000000000003",
         "f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9"},
        {"b7e151628aed2a6abf7158809cf4f3c762e7160f38b4da56a784d9045190cfef",
         "dff1d77f2a671c5f36183726db2341be58feae1da2deced843240f7b502ba659"},
    };
    for (size_t i = 0; i < 2; i++) {
        uint8_t sk[32], want[32], pub[32];
        hex(sk, vec[i][0]);
        hex(want, vec[i][1]);
        CHECK_INT_EQ(tun_nostr_public(pub, sk), 0);
        CHECK_MEM_EQ(pub, want, 32);
        CHECK_INT_EQ(tun_nostr_public_check(pub), 0);
    }
}

static void test_generate(void)
{
    uint8_t prev[32] = {0};
    for (int i = 0; i < 100; i++) {
        uint8_t sk[32], pub[32], back[32];
        CHECK_INT_EQ(tun_nostr_secret_generate(sk), 0);
        CHECK(memcmp(sk, prev, 32) != 0);
        memcpy(prev, sk, 32);
        CHECK_INT_EQ(tun_nostr_secret_check(sk), 0);
        CHECK_INT_EQ(tun_nostr_public(pub, sk), 0);
        CHECK_INT_EQ(tun_nostr_public_check(pub), 0);

        char text[TUN_NOSTR_BECH32_LEN + 1];
        CHECK_INT_EQ(tun_nostr_nsec_encode(text, sk), 63);
        CHECK(memcmp(text, "nsec1", 5) == 0);
        CHECK_INT_EQ(tun_nostr_nsec_parse(back, text, 63, NULL), 0);
        CHECK_MEM_EQ(back, sk, 32);
        CHECK_INT_EQ(tun_nostr_npub_encode(text, pub), 63);
        CHECK(memcmp(text, "npub1", 5) == 0);
        CHECK_INT_EQ(tun_nostr_npub_parse(back, text, 63, NULL), 0);
        CHECK_MEM_EQ(back, pub, 32);
    }
}

static void test_invalid_keys(void)
{
    uint8_t zero[32] = {0}, order[32], pub[32];
    /* The group order n is not a valid secret; n - 1 is. */
    hex(order, "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
    CHECK_INT_EQ(tun_nostr_secret_check(zero), TUN_ECRYPTO);
    CHECK_INT_EQ(tun_nostr_secret_check(order), TUN_ECRYPTO);
    CHECK_INT_EQ(tun_nostr_public(pub, order), TUN_ECRYPTO);
    order[31] = 0x40;
    CHECK_INT_EQ(tun_nostr_secret_check(order), 0);
    /* x = 5 is not on secp256k1 (5^3 + 7 = 132 is not a square mod p); x = 1 is. */
    uint8_t x[32] = {0};
    x[31] = 5;
    CHECK_INT_EQ(tun_nostr_public_check(x), TUN_ECRYPTO);
    x[31] = 1;
    CHECK_INT_EQ(tun_nostr_public_check(x), 0);

    char text[TUN_NOSTR_BECH32_LEN + 1];
    uint8_t sk[32];
    tun_nostr_nsec_encode(text, zero);
    CHECK_INT_EQ(tun_nostr_nsec_parse(sk, text, 63, NULL), TUN_ECRYPTO);
    CHECK_INT_EQ(
        tun_nostr_nsec_parse(sk, "0000000000000000000000000000000000000000000000000000000000000000",
                             64, NULL),
        TUN_ECRYPTO);
    x[31] = 5;
    tun_nostr_npub_encode(text, x);
    CHECK_INT_EQ(tun_nostr_npub_parse(pub, text, 63, NULL), TUN_ECRYPTO);
}

static void test_parse_errors(void)
{
    uint8_t k[32], untouched[32];
    memset(k, 0x55, 32);
    memset(untouched, 0x55, 32);
    size_t pos = 99;

    /* Wrong kind: each HRP only where it belongs. */
    CHECK_INT_EQ(tun_nostr_nsec_parse(k, NPUB, 63, NULL), TUN_EPROTO);
    CHECK_INT_EQ(tun_nostr_npub_parse(k, NSEC, 63, NULL), TUN_EPROTO);
    /* A typo: checksum. */
    char t[TUN_NOSTR_BECH32_LEN + 1];
    memcpy(t, NSEC, sizeof t);
    t[20] = t[20] == 'q' ? 'p' : 'q';
    CHECK_INT_EQ(tun_nostr_nsec_parse(k, t, 63, NULL), TUN_ECHECKSUM);
    /* Bad characters. */
    memcpy(t, NPUB, sizeof t);
    t[10] = 'b';
    CHECK_INT_EQ(tun_nostr_npub_parse(k, t, 63, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 10);
    t[10] = ' ';
    CHECK_INT_EQ(tun_nostr_npub_parse(k, t, 63, &pos), TUN_ERANGE);
    CHECK_INT_EQ(pos, 10);
    /* Mixed case. */
    memcpy(t, NPUB, sizeof t);
    t[0] = 'N';
    CHECK_INT_EQ(tun_nostr_npub_parse(k, t, 63, NULL), TUN_EINVAL);
    /* Lengths: truncated bech32 (checksum fails first), too short to hold a checksum, hex of the
     * wrong length, and a valid bech32 string with the wrong payload size. */
    CHECK_INT_EQ(tun_nostr_npub_parse(k, NPUB, 62, NULL), TUN_ECHECKSUM);
    CHECK_INT_EQ(tun_nostr_npub_parse(k, "npub1abc", 8, NULL), TUN_ELENGTH);
    CHECK_INT_EQ(tun_nostr_npub_parse(k, "npubqqqqqqqq", 12, NULL), TUN_EFORMAT); /* no '1' */
    CHECK_INT_EQ(tun_nostr_npub_parse(k, "", 0, NULL), TUN_EFORMAT);
    uint8_t short_key[31] = {1};
    char short_text[TUN_BECH32_MAX_LEN + 1];
    CHECK_INT_EQ(tun_bech32_encode_bytes(short_text, sizeof short_text, "npub", short_key, 31), 61);
    CHECK_INT_EQ(tun_nostr_npub_parse(k, short_text, 61, NULL), TUN_ELENGTH);
    /* Hex with a non-hex character. */
    char h[TUN_NOSTR_HEX_LEN + 1];
    memcpy(h, NPUB_HEX, sizeof h);
    h[33] = 'g';
    CHECK_INT_EQ(tun_nostr_npub_parse(k, h, 64, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 33);
    /* 52 data characters whose last one has padding bits set. */
    uint8_t data5[52] = {0};
    data5[0] = 1;
    data5[51] = 1;
    char padded[TUN_BECH32_MAX_LEN + 1];
    CHECK_INT_EQ(tun_bech32_encode(padded, sizeof padded, "npub", data5, 52), 63);
    CHECK_INT_EQ(tun_nostr_npub_parse(k, padded, 63, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 56);
    CHECK_MEM_EQ(k, untouched, 32); /* never written on failure */
}

int main(void)
{
    if (sodium_init() < 0)
        return 2;
    CHECK(tun_nostr_context() != NULL);
    CHECK(tun_nostr_context() == tun_nostr_context());
    test_nip19_vectors();
    test_bip340_pubkeys();
    test_generate();
    test_invalid_keys();
    test_parse_errors();
    return TEST_DONE();
}
