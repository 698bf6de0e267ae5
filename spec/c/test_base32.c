/* util/base32: RFC 4648 vectors, round trips, and every documented rejection. */
#include "util/base32.h"
#include "util/error.h"

#include "test.h"

#include <sodium.h>

static void test_rfc4648_vectors(void)
{
    /* RFC 4648 section 10, lowercased and without padding. */
    static const char *const vec[][2] = {
        {"", ""},
        {"f", "my"},
        {"fo", "mzxq"},
        {"foo", "mzxw6"},
        {"foob", "mzxw6yq"},
        {"fooba", "mzxw6ytb"},
        {"foobar", "mzxw6ytboi"},
    };
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
        char out[32];
        size_t n = strlen(vec[i][0]);
        CHECK_INT_EQ(tun_base32_encode(out, sizeof out, (const uint8_t *)vec[i][0], n),
                     strlen(vec[i][1]));
        CHECK_STR_EQ(out, vec[i][1]);
        CHECK_INT_EQ(tun_base32_encoded_len(n), strlen(vec[i][1]));

        uint8_t back[16];
        CHECK_INT_EQ(tun_base32_decode(back, sizeof back, vec[i][1], strlen(vec[i][1]), NULL), n);
        CHECK_MEM_EQ(back, vec[i][0], n);
    }
}

static void test_case_insensitive(void)
{
    uint8_t out[8];
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "MZXW6YTBOI", 10, NULL), 6);
    CHECK_MEM_EQ(out, "foobar", 6);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "MzXw6YtBoI", 10, NULL), 6);
    CHECK_MEM_EQ(out, "foobar", 6);
}

static void test_round_trip_all_lengths(void)
{
    uint8_t in[64], back[64];
    char text[128];
    for (size_t n = 0; n <= sizeof in; n++) {
        randombytes_buf(in, n);
        int len = tun_base32_encode(text, sizeof text, in, n);
        CHECK_INT_EQ(len, tun_base32_encoded_len(n));
        for (int i = 0; i < len; i++)
            CHECK((text[i] >= 'a' && text[i] <= 'z') || (text[i] >= '2' && text[i] <= '7'));
        CHECK_INT_EQ(tun_base32_decoded_len((size_t)len), n);
        CHECK_INT_EQ(tun_base32_decode(back, sizeof back, text, (size_t)len, NULL), n);
        CHECK_MEM_EQ(back, in, n);
    }
}

static void test_rejections(void)
{
    uint8_t out[16];
    size_t pos = 99;

    /* Lengths 1, 3 and 6 (mod 8) cannot come from whole bytes. */
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "m", 1, NULL), TUN_ELENGTH);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "mzx", 3, NULL), TUN_ELENGTH);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "mzxw6y", 6, NULL), TUN_ELENGTH);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "mzxw6ytbo", 9, NULL), TUN_ELENGTH);

    /* Characters outside the alphabet, with the position of the first one. */
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "mzx06ytb", 8, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 3);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "1zxw6ytb", 8, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 0);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "mzxw 6yt", 8, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 4);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "mzxw6yt8", 8, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 7);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "my\0q", 4, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 2);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "my\xc3\xa9", 4, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 2);

    /* Padding is its own error, even where the length would otherwise be fine. */
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "my======", 8, &pos), TUN_EINVAL);
    CHECK_INT_EQ(pos, 2);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "mzxw6===", 8, &pos), TUN_EINVAL);
    CHECK_INT_EQ(pos, 5);

    /* Non-canonical trailing bits: "my" is 'f'; "mz" carries one extra set bit. */
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "mz", 2, &pos), TUN_ERANGE);
    CHECK_INT_EQ(pos, 1);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "mzxr", 4, NULL), TUN_ERANGE);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "mzxw7", 5, NULL), TUN_ERANGE);
    CHECK_INT_EQ(tun_base32_decode(out, sizeof out, "mzxw6yr", 7, NULL), TUN_ERANGE);
    /* Every non-canonical last character of a 2-character text is caught. */
    for (int v = 0; v < 32; v++) {
        char t[3] = {'m', "abcdefghijklmnopqrstuvwxyz234567"[v], 0};
        int want = (v & 3) ? TUN_ERANGE : 1;
        CHECK_INT_EQ(tun_base32_decode(out, sizeof out, t, 2, NULL), want);
    }

    /* Output buffer too small; encode buffer too small. */
    CHECK_INT_EQ(tun_base32_decode(out, 5, "mzxw6ytboi", 10, NULL), TUN_ETOOBIG);
    char small[10];
    CHECK_INT_EQ(tun_base32_encode(small, sizeof small, (const uint8_t *)"foobar", 6), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_base32_encode(small, 11 - 1, (const uint8_t *)"foobar", 6), TUN_ETOOBIG);
}

static void test_endpoint_sized(void)
{
    /* 32 bytes (an Ed25519 key) are 52 characters; bytes 0..31 cross-checked with Python's
     * base64.b32encode. */
    uint8_t key[32], back[32];
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)i;
    char text[53];
    CHECK_INT_EQ(tun_base32_encode(text, sizeof text, key, 32), 52);
    CHECK_STR_EQ(text, "aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq");
    CHECK_INT_EQ(tun_base32_decode(back, sizeof back, text, 52, NULL), 32);
    CHECK_MEM_EQ(back, key, 32);
}

int main(void)
{
    if (sodium_init() < 0)
        return 2;
    test_rfc4648_vectors();
    test_case_insensitive();
    test_round_trip_all_lengths();
    test_rejections();
    test_endpoint_sized();
    return TEST_DONE();
}
