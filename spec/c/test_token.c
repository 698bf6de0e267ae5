/* util/token: vectors, the check character, generation, and exhaustive single-character
 * substitution and transposition checks. */
#include "util/error.h"
#include "util/token.h"

#include "test.h"

#include <sodium.h>

static const char ALPHA[] = TUN_TOKEN_ALPHABET;

/* Build a token from a 16-character body. */
static void make_token(char out[TUN_TOKEN_LEN + 1], const char *body)
{
    out[0] = 'i';
    memcpy(out + 1, body, TUN_TOKEN_BODY_LEN);
    CHECK_INT_EQ(tun_token_check_char(body, TUN_TOKEN_BODY_LEN, &out[17], NULL), 0);
    out[18] = '\0';
}

static void test_alphabet(void)
{
    CHECK_INT_EQ(strlen(ALPHA), TUN_TOKEN_RADIX);
    for (int i = 0; i < TUN_TOKEN_RADIX; i++)
        CHECK_INT_EQ(tun_token_char_index((unsigned char)ALPHA[i]), i);
    int members = 0;
    for (int c = 0; c < 256; c++)
        members += tun_token_char_index(c) >= 0;
    CHECK_INT_EQ(members, TUN_TOKEN_RADIX);
    CHECK_INT_EQ(tun_token_char_index('+'), -1);
    CHECK_INT_EQ(tun_token_char_index('/'), -1);
    CHECK_INT_EQ(tun_token_char_index('='), -1);
}

static void test_vectors(void)
{
    static const char *const vec[][2] = {
        {"ABCDEF1234567890", "iABCDEF1234567890k"},
        {"AAAAAAAAAAAAAAAA", "iAAAAAAAAAAAAAAAAA"},
        {"0123456789abcdef", "i0123456789abcdef5"},
    };
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
        char tok[TUN_TOKEN_LEN + 1];
        make_token(tok, vec[i][0]);
        CHECK_STR_EQ(tok, vec[i][1]);
        CHECK_INT_EQ(tun_token_validate(vec[i][1], TUN_TOKEN_LEN, NULL), 0);
    }
    /* A worked example with the algorithm spelled out: body "B" (index 1) gets factor 2,
     * sum = 2, check = 65 - 2 = 63 = '_'. */
    char check = 0;
    CHECK_INT_EQ(tun_token_check_char("B", 1, &check, NULL), 0);
    CHECK_INT_EQ(check, '_');
    /* '.' (64) * 2 = 128 = 1*65 + 63: digit sum 64, check 1 = 'B'. */
    CHECK_INT_EQ(tun_token_check_char(".", 1, &check, NULL), 0);
    CHECK_INT_EQ(check, 'B');
    CHECK_INT_EQ(tun_token_check_char("", 0, &check, NULL), 0);
    CHECK_INT_EQ(check, 'A');
    size_t pos = 0;
    check = '?';
    CHECK_INT_EQ(tun_token_check_char("ABC!EF+", 7, &check, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 3);
    CHECK_INT_EQ(check, '?');
}

static void test_validation_errors(void)
{
    size_t pos = 99;
    /* Order: non-ASCII, length, prefix, alphabet, checksum. */
    CHECK_INT_EQ(tun_token_validate("iABCDEF1234567890\xc3\xa9", 19, &pos), TUN_ERANGE);
    CHECK_INT_EQ(pos, 17);
    CHECK_INT_EQ(tun_token_validate("\xffiABC", 5, &pos), TUN_ERANGE);
    CHECK_INT_EQ(pos, 0);
    CHECK_INT_EQ(tun_token_validate("iABCDEF1234567890", 17, NULL), TUN_ELENGTH);
    CHECK_INT_EQ(tun_token_validate("iABCDEF1234567890kk", 19, NULL), TUN_ELENGTH);
    CHECK_INT_EQ(tun_token_validate("", 0, NULL), TUN_ELENGTH);
    CHECK_INT_EQ(tun_token_validate("xABCDEF1234567890k", 18, NULL), TUN_EPROTO);
    CHECK_INT_EQ(tun_token_validate("IABCDEF1234567890k", 18, NULL), TUN_EPROTO);
    CHECK_INT_EQ(tun_token_validate("iABCD!F12345678+0k", 18, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 5);
    CHECK_INT_EQ(tun_token_validate("iABCDEF1234567890=", 18, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 17);
    CHECK_INT_EQ(tun_token_validate("iABCDEF12345\00067890k", 18, &pos), TUN_EFORMAT);
    CHECK_INT_EQ(pos, 12);
    CHECK_INT_EQ(tun_token_validate("iABCDEF1234567890j", 18, NULL), TUN_ECHECKSUM);
    CHECK_INT_EQ(tun_token_validate("iABCDEF1234567809k", 18, NULL), TUN_ECHECKSUM);
}

/*
 * Luhn mod 65 has a blind spot that the specified algorithm cannot avoid: at a position
 * weighted 2, indices x and x + 32 (1 <= x <= 32) give the same term, because 2x and 2(x + 32)
 * have the same base-65 digit sum (e.g. 'B' = 1 -> 2 and 'h' = 33 -> 66 = "1,1" -> 2). Those
 * positions are the even ones (2, 4, ..., 16): the check character at 17 is weighted 1.
 */
static int blind_spot(int pos, int from, int to)
{
    int a = tun_token_char_index(from), b = tun_token_char_index(to);
    return pos % 2 == 0 && pos <= TUN_TOKEN_BODY_LEN && a > 0 && b > 0 &&
           (a - b == 32 || b - a == 32);
}

/* Every token differing from a valid one in exactly one byte (any of 255 other values, at any
 * of the 18 positions) is rejected, with the error the position and byte call for, except for
 * the blind-spot substitutions above, which are counted exactly. */
static void check_all_substitutions(const char *tok)
{
    char t[TUN_TOKEN_LEN + 1];
    int blind = 0, expected_blind = 0;
    for (int p = 2; p <= TUN_TOKEN_BODY_LEN; p += 2)
        expected_blind += tun_token_char_index((unsigned char)tok[p]) != 0;
    for (int p = 0; p < TUN_TOKEN_LEN; p++) {
        for (int c = 0; c < 256; c++) {
            if (c == (unsigned char)tok[p])
                continue;
            memcpy(t, tok, sizeof t);
            t[p] = (char)c;
            int rc = tun_token_validate(t, TUN_TOKEN_LEN, NULL);
            int want;
            if (c >= 0x80)
                want = TUN_ERANGE;
            else if (p == 0)
                want = TUN_EPROTO;
            else if (tun_token_char_index(c) < 0)
                want = TUN_EFORMAT;
            else if (blind_spot(p, (unsigned char)tok[p], c))
                want = 0;
            else
                want = TUN_ECHECKSUM;
            blind += rc == 0;
            CHECK_INT_EQ(rc, want);
        }
    }
    CHECK_INT_EQ(blind, expected_blind);
    CHECK(blind <= 8);
}

/* Swapping two different neighbours in body + check is caught, except 'A' with '.'. */
static void check_all_transpositions(void)
{
    char body[TUN_TOKEN_BODY_LEN + 1] = "mNopQrStUvWxYz01";
    int missed = 0, missed_other = 0;
    for (int p = 1; p < TUN_TOKEN_BODY_LEN; p++) { /* swap body positions p and p+1 (1-based) */
        for (int a = 0; a < TUN_TOKEN_RADIX; a++) {
            for (int b = 0; b < TUN_TOKEN_RADIX; b++) {
                if (a == b)
                    continue;
                char tok[TUN_TOKEN_LEN + 1];
                body[p - 1] = ALPHA[a];
                body[p] = ALPHA[b];
                make_token(tok, body);
                char t = tok[p];
                tok[p] = tok[p + 1];
                tok[p + 1] = t;
                if (tun_token_validate(tok, TUN_TOKEN_LEN, NULL) == 0) {
                    missed++;
                    if (!((a == 0 && b == 64) || (a == 64 && b == 0)))
                        missed_other++;
                }
            }
        }
    }
    CHECK_INT_EQ(missed_other, 0);
    CHECK_INT_EQ(missed, 2 * (TUN_TOKEN_BODY_LEN - 1));
}

static void test_generate(void)
{
    enum { N = 2000 };
    static char toks[N][TUN_TOKEN_LEN + 1];
    int seen[TUN_TOKEN_RADIX] = {0};
    for (int i = 0; i < N; i++) {
        CHECK_INT_EQ(tun_token_generate(toks[i]), 0);
        CHECK_INT_EQ(strlen(toks[i]), TUN_TOKEN_LEN);
        CHECK_INT_EQ(toks[i][0], 'i');
        CHECK_INT_EQ(tun_token_validate(toks[i], TUN_TOKEN_LEN, NULL), 0);
        for (int j = 1; j <= TUN_TOKEN_BODY_LEN; j++)
            seen[tun_token_char_index((unsigned char)toks[i][j])]++;
    }
    /* 32000 uniform draws: every symbol shows up (a miss has probability below 1e-200). */
    for (int s = 0; s < TUN_TOKEN_RADIX; s++)
        CHECK(seen[s] > 0);
    /* No two alike (96 bits each). */
    int dup = 0;
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            dup += memcmp(toks[i], toks[j], TUN_TOKEN_LEN) == 0;
    CHECK_INT_EQ(dup, 0);
    for (int i = 0; i < 20; i++)
        check_all_substitutions(toks[i]);
}

int main(void)
{
    if (sodium_init() < 0)
        return 2;
    test_alphabet();
    test_vectors();
    test_validation_errors();
    check_all_substitutions("iABCDEF1234567890k");
    /* One blind-spot pair spelled out: 'B' (1) and 'h' (33) at position 2. */
    CHECK_INT_EQ(tun_token_validate("iAhCDEF1234567890k", TUN_TOKEN_LEN, NULL), 0);
    CHECK_INT_EQ(tun_token_validate("iAiCDEF1234567890k", TUN_TOKEN_LEN, NULL), TUN_ECHECKSUM);
    check_all_substitutions("iAAAAAAAAAAAAAAAAA");
    check_all_substitutions("i0123456789abcdef5");
    check_all_transpositions();
    test_generate();
    return TEST_DONE();
}
