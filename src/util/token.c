#include "util/token.h"
#include "util/error.h"

#include <sodium.h>

static const char ALPHABET[] = TUN_TOKEN_ALPHABET;

int tun_token_char_index(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    switch (c) {
    case '-':
        return 62;
    case '_':
        return 63;
    case '.':
        return 64;
    default:
        return -1;
    }
}

/* One Luhn mod N term: the base-N digit sum of index * factor. */
static unsigned luhn_term(int index, unsigned factor)
{
    unsigned p = (unsigned)index * factor;
    return p / TUN_TOKEN_RADIX + p % TUN_TOKEN_RADIX;
}

/* Index of the first character of s[0..len) outside the alphabet, or len. */
static size_t first_bad(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len && tun_token_char_index((unsigned char)s[i]) >= 0)
        i++;
    return i;
}

/* Luhn mod N sum of s[0..len) walking right to left, the last character getting `factor`. */
static unsigned luhn_sum(const char *s, size_t len, unsigned factor)
{
    unsigned sum = 0;
    for (size_t i = len; i-- > 0;) {
        /* Reducing as we go keeps the sum small for any length. */
        sum =
            (sum + luhn_term(tun_token_char_index((unsigned char)s[i]), factor)) % TUN_TOKEN_RADIX;
        factor = 3 - factor;
    }
    return sum;
}

int tun_token_check_char(const char *body, size_t len, char *check, size_t *bad_pos)
{
    size_t bad = first_bad(body, len);
    if (bad < len) {
        if (bad_pos)
            *bad_pos = bad;
        return TUN_EFORMAT;
    }
    unsigned sum = luhn_sum(body, len, 2);
    *check = ALPHABET[(TUN_TOKEN_RADIX - sum) % TUN_TOKEN_RADIX];
    return 0;
}

int tun_token_generate(char out[TUN_TOKEN_LEN + 1])
{
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    out[0] = TUN_TOKEN_PREFIX;
    for (int i = 1; i <= TUN_TOKEN_BODY_LEN; i++)
        out[i] = ALPHABET[randombytes_uniform(TUN_TOKEN_RADIX)];
    int rc = tun_token_check_char(out + 1, TUN_TOKEN_BODY_LEN, &out[TUN_TOKEN_LEN - 1], NULL);
    out[TUN_TOKEN_LEN] = '\0';
    return rc;
}

int tun_token_validate(const char *s, size_t len, size_t *bad_pos)
{
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)s[i] >= 0x80) {
            if (bad_pos)
                *bad_pos = i;
            return TUN_ERANGE;
        }
    }
    if (len != TUN_TOKEN_LEN)
        return TUN_ELENGTH;
    if (s[0] != TUN_TOKEN_PREFIX)
        return TUN_EPROTO;
    size_t bad = first_bad(s + 1, TUN_TOKEN_LEN - 1);
    if (bad < TUN_TOKEN_LEN - 1) {
        if (bad_pos)
            *bad_pos = bad + 1;
        return TUN_EFORMAT;
    }
    return luhn_sum(s + 1, TUN_TOKEN_LEN - 1, 1) == 0 ? 0 : TUN_ECHECKSUM;
}
