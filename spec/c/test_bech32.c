/* util/bech32: BIP-173 vectors (valid and invalid), bit conversion, round trips, NIP-19. */
#include "util/bech32.h"
#include "util/error.h"

#include "test.h"

#include <sodium.h>

static void test_bip173_valid(void)
{
    static const char *const valid[] = {
        "A12UEL5L",
        "a12uel5l",
        "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tg"
        "s",
        "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
        "11qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqc8247"
        "j",
        "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
        "?1ezyfcl",
    };
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        const char *s = valid[i];
        size_t len = strlen(s);
        char hrp[TUN_BECH32_MAX_LEN + 1];
        uint8_t data[TUN_BECH32_MAX_LEN];
        int n = tun_bech32_decode(hrp, sizeof hrp, data, sizeof data, s, len, NULL);
        CHECK(n >= 0);
        if (n < 0) {
            fprintf(stderr, "  rejected %s: %s\n", s, tun_strerror(n));
            continue;
        }
        CHECK_INT_EQ(n, len - strlen(hrp) - 1 - 6);
        /* Re-encoding gives the lowercase form of the input. */
        char again[TUN_BECH32_MAX_LEN + 1], lower[TUN_BECH32_MAX_LEN + 1];
        for (size_t j = 0; j <= len; j++)
            lower[j] = (s[j] >= 'A' && s[j] <= 'Z') ? (char)(s[j] + 32) : s[j];
        CHECK_INT_EQ(tun_bech32_encode(again, sizeof again, hrp, data, (size_t)n), len);
        CHECK_STR_EQ(again, lower);

        /* Flipping any one data character breaks the checksum. */
        size_t sep = strlen(hrp);
        for (size_t j = sep + 1; j < len; j++) {
            char bad[TUN_BECH32_MAX_LEN + 1];
            memcpy(bad, lower, len + 1);
            bad[j] = bad[j] == 'q' ? 'p' : 'q';
            CHECK_INT_EQ(tun_bech32_decode(hrp, sizeof hrp, data, sizeof data, bad, len, NULL),
                         TUN_ECHECKSUM);
        }
    }

    /* "abcdef" carries the whole charset in order: values 0..31. */
    char hrp[8];
    uint8_t data[40];
    const char *s = "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw";
    CHECK_INT_EQ(tun_bech32_decode(hrp, sizeof hrp, data, sizeof data, s, strlen(s), NULL), 32);
    CHECK_STR_EQ(hrp, "abcdef");
    for (int i = 0; i < 32; i++)
        CHECK_INT_EQ(data[i], i);
}

static void test_bip173_invalid(void)
{
    static const struct {
        const char *s;
        size_t len;
        int err;
        long pos; /* expected *bad_pos, or -1 when not reported */
    } bad[] = {
        {" 1nwldj5", 8, TUN_ERANGE, 0},
        {"\x7f"
         "1axkwrx",
         8, TUN_ERANGE, 0},
        {"\x80"
         "1eym55h",
         8, TUN_ERANGE, 0},
        {"an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569p"
         "vx",
         91, TUN_ELENGTH, -1},
        {"pzry9x0s0muk", 12, TUN_EFORMAT, -1},
        {"1pzry9x0s0muk", 13, TUN_ERANGE, -1},
        {"x1b4n0q5v", 9, TUN_EFORMAT, 2},
        {"li1dgmt3", 8, TUN_ELENGTH, -1},
        {"de1lg7wt\xff", 9, TUN_ERANGE, 8},
        {"A1G7SGD8", 8, TUN_ECHECKSUM, -1},
        {"10a06t8", 7, TUN_ERANGE, -1},
        {"1qzzfhee", 8, TUN_ERANGE, -1},
        {"a12UEL5L", 8, TUN_EINVAL, -1},
        {"A12uEL5L", 8, TUN_EINVAL, -1},
        /* bech32m (BIP-350) strings are not bech32. */
        {"a1lqfn3a", 8, TUN_ECHECKSUM, -1},
        /* Embedded NUL and an empty string. */
        {"a1\0uel5l", 8, TUN_ERANGE, 2},
        {"", 0, TUN_EFORMAT, -1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char hrp[TUN_BECH32_MAX_LEN + 1];
        uint8_t data[TUN_BECH32_MAX_LEN];
        size_t pos = 12345;
        int rc = tun_bech32_decode(hrp, sizeof hrp, data, sizeof data, bad[i].s, bad[i].len, &pos);
        CHECK_INT_EQ(rc, bad[i].err);
        if (rc != bad[i].err)
            fprintf(stderr, "  vector %zu\n", i);
        if (bad[i].pos >= 0)
            CHECK_INT_EQ(pos, bad[i].pos);
    }
}

static void test_convert_bits(void)
{
    /* BIP-173 segwit example: witness version 0 then the 20-byte program. */
    const char *addr = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";
    char hrp[8];
    uint8_t data5[64], prog[40];
    int n5 = tun_bech32_decode(hrp, sizeof hrp, data5, sizeof data5, addr, strlen(addr), NULL);
    CHECK_INT_EQ(n5, 33);
    CHECK_STR_EQ(hrp, "bc");
    CHECK_INT_EQ(data5[0], 0);
    CHECK_INT_EQ(tun_bech32_convert_bits(prog, sizeof prog, data5 + 1, 32, 5, 8, 0), 20);
    uint8_t want[20];
    CHECK(sodium_hex2bin(want, sizeof want, "751e76e8199196d454941c45d1b3a323f1433bd6", 40, NULL,
                         NULL, NULL) == 0);
    CHECK_MEM_EQ(prog, want, 20);

    uint8_t out[16];
    const uint8_t ff = 0xff;
    CHECK_INT_EQ(tun_bech32_convert_bits(out, sizeof out, &ff, 1, 8, 5, 1), 2);
    CHECK_INT_EQ(out[0], 31);
    CHECK_INT_EQ(out[1], 28);
    /* Without padding the leftover 3 bits are an error; so are set padding bits on decode. */
    CHECK_INT_EQ(tun_bech32_convert_bits(out, sizeof out, &ff, 1, 8, 5, 0), TUN_EFORMAT);
    const uint8_t set_pad[2] = {31, 29};
    CHECK_INT_EQ(tun_bech32_convert_bits(out, sizeof out, set_pad, 2, 5, 8, 0), TUN_EFORMAT);
    const uint8_t clean_pad[2] = {31, 28};
    CHECK_INT_EQ(tun_bech32_convert_bits(out, sizeof out, clean_pad, 2, 5, 8, 0), 1);
    CHECK_INT_EQ(out[0], 0xff);
    /* Too many groups: 3 x 5 bits leave 7 bits over, more than a whole group. */
    const uint8_t three[3] = {0, 0, 0};
    CHECK_INT_EQ(tun_bech32_convert_bits(out, sizeof out, three, 3, 5, 8, 0), TUN_EFORMAT);
    const uint8_t big = 32;
    CHECK_INT_EQ(tun_bech32_convert_bits(out, sizeof out, &big, 1, 5, 8, 1), TUN_ERANGE);
    CHECK_INT_EQ(tun_bech32_convert_bits(out, 1, &ff, 1, 8, 5, 1), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_bech32_convert_bits(out, sizeof out, &ff, 1, 0, 5, 1), TUN_EINVAL);
    CHECK_INT_EQ(tun_bech32_convert_bits(out, sizeof out, &ff, 1, 8, 9, 1), TUN_EINVAL);
}

static void test_encode_errors(void)
{
    char out[TUN_BECH32_MAX_LEN + 1];
    const uint8_t d[1] = {0};
    CHECK_INT_EQ(tun_bech32_encode(out, sizeof out, "", d, 1), TUN_ERANGE);
    CHECK_INT_EQ(tun_bech32_encode(out, sizeof out, "a b", d, 1), TUN_ERANGE);
    CHECK_INT_EQ(tun_bech32_encode(out, sizeof out, "Npub", d, 1), TUN_EINVAL);
    const uint8_t big[1] = {32};
    CHECK_INT_EQ(tun_bech32_encode(out, sizeof out, "a", big, 1), TUN_EFORMAT);
    uint8_t many[83] = {0};
    CHECK_INT_EQ(tun_bech32_encode(out, sizeof out, "a", many, 82), 90);
    CHECK_INT_EQ(tun_bech32_encode(out, sizeof out, "a", many, 83), TUN_ELENGTH);
    CHECK_INT_EQ(tun_bech32_encode(out, 90, "a", many, 82), TUN_ETOOBIG);
    /* Bytes: 51 fit under a 1-character HRP, 52 never do. */
    uint8_t bytes[52] = {0};
    CHECK_INT_EQ(tun_bech32_encode_bytes(out, sizeof out, "a", bytes, 51), 90);
    CHECK_INT_EQ(tun_bech32_encode_bytes(out, sizeof out, "a", bytes, 52), TUN_ELENGTH);
    CHECK_INT_EQ(tun_bech32_encode_bytes(out, sizeof out, "abc", bytes, 51), TUN_ELENGTH);
}

static void test_bytes_round_trip(void)
{
    for (size_t n = 0; n <= 51; n++) {
        uint8_t in[51], back[64];
        char text[TUN_BECH32_MAX_LEN + 1], hrp[8];
        randombytes_buf(in, n);
        int len = tun_bech32_encode_bytes(text, sizeof text, "t", in, n);
        CHECK(len > 0);
        if (len <= 0)
            continue;
        CHECK_INT_EQ(
            tun_bech32_decode_bytes(hrp, sizeof hrp, back, sizeof back, text, (size_t)len, NULL),
            n);
        CHECK_MEM_EQ(back, in, n);
        CHECK_STR_EQ(hrp, "t");
        if (n > 0)
            CHECK_INT_EQ(
                tun_bech32_decode_bytes(hrp, sizeof hrp, back, n - 1, text, (size_t)len, NULL),
                TUN_ETOOBIG);
        CHECK_INT_EQ(tun_bech32_decode_bytes(hrp, 1, back, sizeof back, text, (size_t)len, NULL),
                     TUN_ETOOBIG);
    }
    /* A valid string whose data does not regroup into bytes: one 5-bit value. */
    char text[TUN_BECH32_MAX_LEN + 1], hrp[8];
    uint8_t one[1] = {3}, back[8];
    int len = tun_bech32_encode(text, sizeof text, "t", one, 1);
    CHECK_INT_EQ(
        tun_bech32_decode_bytes(hrp, sizeof hrp, back, sizeof back, text, (size_t)len, NULL),
        TUN_EPROTO);
}

static void test_nip19(void)
{
    /* NIP-19 examples. */
    const char *npub = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";
    const char *hex = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e";
    uint8_t want[32], key[32];
    char hrp[8], text[TUN_BECH32_MAX_LEN + 1];
    CHECK(sodium_hex2bin(want, 32, hex, 64, NULL, NULL, NULL) == 0);
    CHECK_INT_EQ(
        tun_bech32_decode_bytes(hrp, sizeof hrp, key, sizeof key, npub, strlen(npub), NULL), 32);
    CHECK_STR_EQ(hrp, "npub");
    CHECK_MEM_EQ(key, want, 32);
    CHECK_INT_EQ(tun_bech32_encode_bytes(text, sizeof text, "npub", want, 32), 63);
    CHECK_STR_EQ(text, npub);
}

int main(void)
{
    if (sodium_init() < 0)
        return 2;
    test_bip173_valid();
    test_bip173_invalid();
    test_convert_bits();
    test_encode_errors();
    test_bytes_round_trip();
    test_nip19();
    return TEST_DONE();
}
