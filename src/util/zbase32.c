#include "util/zbase32.h"
#include "util/error.h"

#include <limits.h>

static const char ALPHABET[] = "ybndrfg8ejkmcpqxot1uwisza345h769";

size_t tun_zbase32_encoded_len(size_t n)
{
    return (n / 5) * 8 + (n % 5 * 8 + 4) / 5;
}

int tun_zbase32_encode(char *out, size_t cap, const uint8_t *in, size_t n)
{
    size_t need = tun_zbase32_encoded_len(n);
    if (out == NULL || cap < need + 1 || need > INT_MAX)
        return TUN_ETOOBIG;
    size_t o = 0;
    unsigned acc = 0; /* never more than 12 bits */
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            out[o++] = ALPHABET[(acc >> bits) & 31];
        }
        acc &= (1u << bits) - 1;
    }
    if (bits > 0)
        out[o++] = ALPHABET[(acc << (5 - bits)) & 31];
    out[o] = '\0';
    return (int)o;
}

/* Value of a z-base-32 character (either case), or -1. */
static int value_of(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        c = (unsigned char)(c - 'A' + 'a');
    for (int i = 0; i < 32; i++)
        if ((unsigned char)ALPHABET[i] == c)
            return i;
    return -1;
}

int tun_zbase32_decode(uint8_t *out, size_t cap, const char *in, size_t len, size_t *bad_pos)
{
    for (size_t i = 0; i < len; i++) {
        if (value_of((unsigned char)in[i]) < 0) {
            if (bad_pos)
                *bad_pos = i;
            return TUN_EFORMAT;
        }
    }
    size_t rem = len % 8;
    if (rem == 1 || rem == 3 || rem == 6)
        return TUN_ELENGTH;
    size_t need = (len / 8) * 5 + rem * 5 / 8;
    if (need > cap || need > INT_MAX)
        return TUN_ETOOBIG;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        acc = (acc << 5) | (unsigned)value_of((unsigned char)in[i]);
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Fewer than 5 bits are left over; they must be zero for the text to be canonical. */
    if (acc != 0) {
        if (bad_pos)
            *bad_pos = len - 1;
        return TUN_ERANGE;
    }
    return (int)o;
}
