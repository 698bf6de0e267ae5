#include "util/base32.h"
#include "util/error.h"

#include <limits.h>

static const char ALPHABET[] = "abcdefghijklmnopqrstuvwxyz234567";

size_t tun_base32_encoded_len(size_t n)
{
    return (n / 5) * 8 + (n % 5 * 8 + 4) / 5;
}

size_t tun_base32_decoded_len(size_t len)
{
    return (len / 8) * 5 + (len % 8) * 5 / 8;
}

int tun__base32_pack(char *out, size_t cap, const uint8_t *in, size_t n, const char alphabet[32])
{
    size_t need = tun_base32_encoded_len(n);
    if (out == NULL || cap < need + 1 || need > INT_MAX)
        return TUN_ETOOBIG;
    size_t o = 0;
    unsigned acc = 0; /* at most 12 bits are ever held */
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            out[o++] = alphabet[(acc >> bits) & 31];
        }
        acc &= (1u << bits) - 1;
    }
    if (bits > 0)
        out[o++] = alphabet[(acc << (5 - bits)) & 31];
    out[o] = '\0';
    return (int)o;
}

int tun_base32_encode(char *out, size_t cap, const uint8_t *in, size_t n)
{
    return tun__base32_pack(out, cap, in, n, ALPHABET);
}

/* Value of a base32 character, -1 for '=' and -2 for anything else. */
static int value_of(unsigned char c)
{
    if (c >= 'a' && c <= 'z')
        return c - 'a';
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= '2' && c <= '7')
        return c - '2' + 26;
    return c == '=' ? -1 : -2;
}

int tun_base32_decode(uint8_t *out, size_t cap, const char *in, size_t len, size_t *bad_pos)
{
    /* Characters are checked before the length so that "abc=" reports the padding, which is
     * the more useful message, rather than the length it also gets wrong. */
    for (size_t i = 0; i < len; i++) {
        int v = value_of((unsigned char)in[i]);
        if (v < 0) {
            if (bad_pos)
                *bad_pos = i;
            return v == -1 ? TUN_EINVAL : TUN_EFORMAT;
        }
    }
    return tun__base32_unpack(out, cap, in, len, value_of, bad_pos);
}

int tun__base32_unpack(uint8_t *out, size_t cap, const char *in, size_t len,
                       int (*char_value)(unsigned char), size_t *bad_pos)
{
    size_t rem = len % 8;
    if (rem == 1 || rem == 3 || rem == 6)
        return TUN_ELENGTH;
    size_t need = tun_base32_decoded_len(len);
    if (need > cap || need > INT_MAX)
        return TUN_ETOOBIG;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        acc = (acc << 5) | (unsigned)char_value((unsigned char)in[i]);
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Whatever is left (0-4 bits) is padding inside the last character and must be zero for
     * the text to be canonical. */
    if (acc != 0) {
        if (bad_pos)
            *bad_pos = len - 1;
        return TUN_ERANGE;
    }
    return (int)o;
}
