#include "util/base64.h"

#include <sodium.h>

#include "util/error.h"

static int alphabet_only(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/' || c == '='))
            return 0;
    }
    return 1;
}

int tun_base64_decode(uint8_t *out, size_t cap, size_t *out_len, const char *s, size_t len)
{
    size_t n = 0;
    const char *end = NULL;
    if (!alphabet_only(s, len))
        return TUN_EFORMAT;
    if (len % 4 != 0)
        return TUN_EFORMAT;
    if (len / 4 * 3 > cap + 2) /* at most two padding bytes short of that */
        return TUN_ELENGTH;
    /* libsodium judges where '=' may stand and refuses non-zero unused bits. */
    if (sodium_base642bin(out, cap, s, len, NULL, &n, &end, sodium_base64_VARIANT_ORIGINAL) != 0)
        return (len / 4 * 3 > cap) ? TUN_ELENGTH : TUN_EFORMAT;
    if (end != s + len)
        return TUN_EFORMAT;
    *out_len = n;
    return 0;
}
