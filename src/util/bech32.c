#include "util/bech32.h"
#include "util/error.h"

#include <limits.h>
#include <string.h>

static const char CHARSET[] = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/* Generator of the BCH code over GF(32) from BIP-173. */
static uint32_t polymod_step(uint32_t chk, uint8_t v)
{
    static const uint32_t GEN[5] = {0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3};
    uint32_t top = chk >> 25;
    chk = ((chk & 0x1ffffff) << 5) ^ v;
    for (int i = 0; i < 5; i++)
        if ((top >> i) & 1)
            chk ^= GEN[i];
    return chk;
}

/* Checksum state after the expanded HRP (high bits, 0, low bits), as BIP-173 defines it. */
static uint32_t hrp_polymod(const char *hrp, size_t hrp_len)
{
    uint32_t chk = 1;
    for (size_t i = 0; i < hrp_len; i++)
        chk = polymod_step(chk, (uint8_t)((unsigned char)hrp[i] >> 5));
    chk = polymod_step(chk, 0);
    for (size_t i = 0; i < hrp_len; i++)
        chk = polymod_step(chk, (uint8_t)((unsigned char)hrp[i] & 31));
    return chk;
}

/* Index in CHARSET of a character (either case), or -1. */
static int charset_index(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        c = (unsigned char)(c - 'A' + 'a');
    const char *p = c ? strchr(CHARSET, c) : NULL;
    return p ? (int)(p - CHARSET) : -1;
}

int tun_bech32_encode(char *out, size_t cap, const char *hrp, const uint8_t *data5, size_t n5)
{
    size_t hrp_len = strlen(hrp);
    if (hrp_len == 0)
        return TUN_ERANGE;
    for (size_t i = 0; i < hrp_len; i++) {
        unsigned char c = (unsigned char)hrp[i];
        if (c < 33 || c > 126)
            return TUN_ERANGE;
        if (c >= 'A' && c <= 'Z')
            return TUN_EINVAL;
    }
    for (size_t i = 0; i < n5; i++)
        if (data5[i] > 31)
            return TUN_EFORMAT;
    if (hrp_len + 1 + n5 + TUN_BECH32_CHECKSUM_LEN > TUN_BECH32_MAX_LEN)
        return TUN_ELENGTH;
    size_t total = hrp_len + 1 + n5 + TUN_BECH32_CHECKSUM_LEN;
    if (cap < total + 1)
        return TUN_ETOOBIG;

    uint32_t chk = hrp_polymod(hrp, hrp_len);
    memcpy(out, hrp, hrp_len);
    size_t o = hrp_len;
    out[o++] = '1';
    for (size_t i = 0; i < n5; i++) {
        chk = polymod_step(chk, data5[i]);
        out[o++] = CHARSET[data5[i]];
    }
    for (int i = 0; i < TUN_BECH32_CHECKSUM_LEN; i++)
        chk = polymod_step(chk, 0);
    chk ^= 1; /* bech32; bech32m would use 0x2bc830a3 */
    for (int i = 0; i < TUN_BECH32_CHECKSUM_LEN; i++)
        out[o++] = CHARSET[(chk >> (5 * (5 - i))) & 31];
    out[o] = '\0';
    return (int)o;
}

int tun_bech32_decode(char *hrp, size_t hrp_cap, uint8_t *data5, size_t data5_cap, const char *in,
                      size_t len, size_t *bad_pos)
{
    int lower = 0, upper = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c < 33 || c > 126) {
            if (bad_pos)
                *bad_pos = i;
            return TUN_ERANGE;
        }
        lower |= c >= 'a' && c <= 'z';
        upper |= c >= 'A' && c <= 'Z';
    }
    if (lower && upper)
        return TUN_EINVAL;
    if (len > TUN_BECH32_MAX_LEN)
        return TUN_ELENGTH;

    /* The separator is the last '1': the HRP may itself contain '1'. */
    size_t sep = len;
    for (size_t i = len; i-- > 0;) {
        if (in[i] == '1') {
            sep = i;
            break;
        }
    }
    if (sep == len)
        return TUN_EFORMAT;
    if (sep == 0)
        return TUN_ERANGE;
    if (len - sep - 1 < TUN_BECH32_CHECKSUM_LEN)
        return TUN_ELENGTH;

    size_t n5 = len - sep - 1 - TUN_BECH32_CHECKSUM_LEN;
    uint8_t values[TUN_BECH32_MAX_LEN];
    for (size_t i = sep + 1; i < len; i++) {
        int v = charset_index((unsigned char)in[i]);
        if (v < 0) {
            if (bad_pos)
                *bad_pos = i;
            return TUN_EFORMAT;
        }
        values[i - sep - 1] = (uint8_t)v;
    }

    /* The checksum covers the lowercase HRP (BIP-173: "A1G7SGD8" is invalid). */
    char lhrp[TUN_BECH32_MAX_LEN + 1];
    for (size_t i = 0; i < sep; i++) {
        char c = in[i];
        lhrp[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    lhrp[sep] = '\0';
    uint32_t chk = hrp_polymod(lhrp, sep);
    for (size_t i = 0; i < len - sep - 1; i++)
        chk = polymod_step(chk, values[i]);
    if (chk != 1)
        return TUN_ECHECKSUM;

    if (hrp_cap < sep + 1 || data5_cap < n5)
        return TUN_ETOOBIG;
    memcpy(hrp, lhrp, sep + 1);
    if (n5)
        memcpy(data5, values, n5);
    return (int)n5;
}

int tun_bech32_convert_bits(uint8_t *out, size_t cap, const uint8_t *in, size_t n, int from, int to,
                            int pad)
{
    if (from < 1 || from > 8 || to < 1 || to > 8)
        return TUN_EINVAL;
    if (n > INT_MAX / 8)
        return TUN_ETOOBIG;
    /* Count first so that a short buffer is reported before anything is written. */
    size_t total_bits = n * (size_t)from;
    size_t need = total_bits / (size_t)to + (pad && total_bits % (size_t)to ? 1 : 0);
    if (need > cap)
        return TUN_ETOOBIG;
    uint32_t acc = 0;
    int bits = 0;
    uint32_t maxv = (1u << to) - 1;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i] >> from)
            return TUN_ERANGE;
        acc = ((acc << from) | in[i]) & 0xffff;
        bits += from;
        while (bits >= to) {
            bits -= to;
            out[o++] = (uint8_t)((acc >> bits) & maxv);
        }
    }
    if (pad) {
        if (bits)
            out[o++] = (uint8_t)((acc << (to - bits)) & maxv);
    } else if (bits >= from || ((acc << (to - bits)) & maxv)) {
        return TUN_EFORMAT;
    }
    return (int)o;
}

int tun_bech32_encode_bytes(char *out, size_t cap, const char *hrp, const uint8_t *bytes, size_t n)
{
    uint8_t data5[TUN_BECH32_MAX_LEN];
    /* 8 -> 5 bits grows by 8/5; anything over 82 values cannot fit in 90 characters. */
    if (n > (size_t)TUN_BECH32_MAX_DATA5 * 5 / 8)
        return TUN_ELENGTH;
    int n5 = tun_bech32_convert_bits(data5, sizeof data5, bytes, n, 8, 5, 1);
    if (n5 < 0)
        return n5;
    return tun_bech32_encode(out, cap, hrp, data5, (size_t)n5);
}

int tun_bech32_decode_bytes(char *hrp, size_t hrp_cap, uint8_t *out, size_t cap, const char *in,
                            size_t len, size_t *bad_pos)
{
    uint8_t data5[TUN_BECH32_MAX_LEN];
    int n5 = tun_bech32_decode(hrp, hrp_cap, data5, sizeof data5, in, len, bad_pos);
    if (n5 < 0)
        return n5;
    uint8_t bytes[TUN_BECH32_MAX_LEN];
    int n = tun_bech32_convert_bits(bytes, sizeof bytes, data5, (size_t)n5, 5, 8, 0);
    if (n == TUN_EFORMAT)
        return TUN_EPROTO;
    if (n < 0)
        return n;
    if ((size_t)n > cap)
        return TUN_ETOOBIG;
    if (n)
        memcpy(out, bytes, (size_t)n);
    return n;
}
