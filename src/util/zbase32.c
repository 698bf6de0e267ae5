#include "util/zbase32.h"
#include "util/base32.h"
#include "util/error.h"

static const char ALPHABET[] = "ybndrfg8ejkmcpqxot1uwisza345h769";

size_t tun_zbase32_encoded_len(size_t n)
{
    return tun_base32_encoded_len(n);
}

int tun_zbase32_encode(char *out, size_t cap, const uint8_t *in, size_t n)
{
    return tun__base32_pack(out, cap, in, n, ALPHABET);
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
    return tun__base32_unpack(out, cap, in, len, value_of, bad_pos);
}
